#pragma once

// Running the plugin probe process: started with posix_spawn (no fork of a multithreaded
// process), watched until it exits or its deadline passes, then killed. What it reports and
// prints comes back with how it ended; probe.hpp makes sense of it.

#include <chrono>
#include <string>
#include <vector>

namespace troupe {

/// How a probe process ended and what it said.
struct probe_process_result {
  enum class ending {
    exited,     ///< exit status in `code`
    signaled,   ///< killed by signal `code`
    timed_out,  ///< still running at the deadline: killed with SIGKILL
    vanished,   ///< reaped by someone else (SIGCHLD ignored, or a waitpid(-1) elsewhere)
  };
  ending how = ending::vanished;
  int code = 0;
  std::string report;  ///< everything it wrote on its report descriptor (probe_protocol.hpp)
  std::string output;  ///< the last few KiB of its stdout and stderr together
  std::chrono::duration<double> took{};
};

/// Runs `argv` (argv[0] a path) with the report pipe on probe_protocol::report_fd, stdout and
/// stderr on another pipe, stdin /dev/null and no other descriptors of this process. Waits at most
/// `deadline`, then kills it. Throws troupe::error when it cannot be started.
probe_process_result run_probe_process(const std::vector<std::string>& argv,
                                       std::chrono::milliseconds deadline);

/// "SIGSEGV (Segmentation fault)" for a signal number.
std::string describe_signal(int signal);

}  // namespace troupe
