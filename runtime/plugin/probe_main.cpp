// troupe-plugin-probe LIBRARY PARENT_PID: loads a plugin library the way plugin_registry does
// (dlopen, the entry, the table checks, init()) in a process of its own, and reports each step on
// file descriptor 3 (probe_protocol.hpp). libtroupe runs it before loading a library into a
// process (probe.hpp): a library that crashes, exits or hangs here takes only this process down.
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "runtime/plugin/plugin_table.hpp"
#include "runtime/plugin/probe_protocol.hpp"

namespace {

namespace protocol = troupe::probe_protocol;

void report(std::string_view key, std::string_view value) {
  const std::string line = protocol::encode(key, value);
  for (std::size_t done = 0; done < line.size();) {
    const ssize_t n = ::write(protocol::report_fd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ::_exit(3);  // nobody reads: the parent is gone
    done += static_cast<std::size_t>(n);
  }
}

/// The host a probed plugin's init() gets: its log goes to stderr, which the parent keeps the
/// tail of for crash reports.
void log_to_stderr(void*, troupe_log_level level, const char* message) {
  static constexpr const char* levels[] = {"debug", "info", "warning", "error"};
  const char* name = level >= TROUPE_LOG_DEBUG && level <= TROUPE_LOG_ERROR ? levels[level] : "?";
  std::fprintf(stderr, "[%s] %s\n", name, message != nullptr ? message : "");
}

/// Every step of a load; a failed check ends it with a failure record.
void probe(const char* library) {
  const std::string file = library;
  report("stage", "load");
  void* handle = troupe::open_plugin_library(file, file);
  report("stage", "entry");
  const troupe_plugin* api = troupe::plugin_table_of(handle, file);
  const troupe::plugin_kind kind = troupe::check_plugin_table(api, file);
  report("name", api->name);
  report("version", api->version);
  report("description", api->description != nullptr ? api->description : "");
  report("kind", troupe::name_of(kind));
  report("abi", std::to_string(api->abi_major) + "." + std::to_string(api->abi_minor));
  report("stage", "init");
  troupe_host host{sizeof(troupe_host), TROUPE_PLUGIN_ABI_MAJOR, TROUPE_PLUGIN_ABI_MINOR, nullptr,
                   &log_to_stderr};
  troupe_error error{};
  if (api->init(&host, &error) != TROUPE_STATUS_OK) {
    report("failure", troupe::name_of(troupe::plugin_load_failure::init_failed));
    report("cause", troupe::init_failure_message(api->name, error));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr,
                 "usage: troupe-plugin-probe LIBRARY PARENT_PID (run by libtroupe, reports on "
                 "fd 3)\n");
    return 2;
  }
  // NOTES: a probe outlives nothing: if the process that started it dies (or died before this
  // line), a hanging library must not keep running here.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (std::to_string(::getppid()) != argv[2]) return 3;
  try {
    probe(argv[1]);
  } catch (const troupe::plugin_load_error& e) {
    report("failure", troupe::name_of(e.failure()));
    report("cause", e.cause());
  }
  report("done", "");
  // Skip the library's static destructors and atexit handlers: the report is complete.
  ::_exit(0);
}
