#include "runtime/plugin/probe_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <thread>

#include "runtime/core/error.hpp"
#include "runtime/plugin/probe_protocol.hpp"

extern char** environ;

namespace troupe {

namespace {

using steady = std::chrono::steady_clock;

/// Report bytes kept (a real report is a few hundred) and output bytes kept (the tail).
constexpr std::size_t report_limit = 64 * 1024;
constexpr std::size_t output_limit = 4 * 1024;

/// A file descriptor closed when it goes out of scope.
class descriptor {
 public:
  explicit descriptor(int fd = -1) : fd_(fd) {}
  ~descriptor() { reset(); }
  descriptor(const descriptor&) = delete;
  descriptor& operator=(const descriptor&) = delete;
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

/// A close-on-exec pipe whose ends are above the descriptors the child gets (0-3), so the
/// child's dup2s never overwrite one end with another.
std::pair<int, int> make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) fail("cannot create a pipe: {}", std::strerror(errno));
  for (int& fd : fds) {
    const int high = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
    ::close(fd);
    if (high < 0) fail("cannot move a pipe descriptor: {}", std::strerror(errno));
    fd = high;
  }
  return {fds[0], fds[1]};
}

/// This process's environment for the probe, with the sanitizers (when a build has them) told
/// to leave SIGSEGV, SIGBUS, SIGFPE and SIGILL alone.
// NOTES: a sanitized probe would otherwise catch a plugin's crash itself and exit with its own
// status; the caller could then not say "killed by SIGSEGV". Unsanitized builds ignore these.
std::vector<std::string> probe_environment() {
  constexpr const char* keep_signals =
      "handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_sigill=0:handle_abort=0";
  std::vector<std::string> out;
  bool seen[3] = {false, false, false};
  const char* names[3] = {"ASAN_OPTIONS=", "TSAN_OPTIONS=", "UBSAN_OPTIONS="};
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    for (int i = 0; i < 3; ++i)
      if (entry.rfind(names[i], 0) == 0) {
        entry += std::string(entry.size() > std::strlen(names[i]) ? ":" : "") + keep_signals;
        seen[i] = true;
      }
    out.push_back(std::move(entry));
  }
  for (int i = 0; i < 3; ++i)
    if (!seen[i]) out.push_back(std::string(names[i]) + keep_signals);
  return out;
}

pid_t spawn(const std::vector<std::string>& argv, int report_write, int output_write) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, report_write, probe_protocol::report_fd);
  posix_spawn_file_actions_adddup2(&actions, output_write, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, output_write, STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  // Descriptors this process opened without close-on-exec (sockets, files) stay here.
  posix_spawn_file_actions_addclosefrom_np(&actions, probe_protocol::report_fd + 1);
#endif
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t mask;
  sigemptyset(&mask);
  posix_spawnattr_setsigmask(&attributes, &mask);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int s : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD}) sigaddset(&defaults, s);
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const std::vector<std::string> environment = probe_environment();
  std::vector<char*> env;
  for (const auto& e : environment) env.push_back(const_cast<char*>(e.c_str()));
  env.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, args[0], &actions, &attributes, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  if (rc != 0) fail("cannot start {}: {}", argv[0], std::strerror(rc));
  return pid;
}

/// Appends what `fd` has to `into` (keeping at most `limit` bytes: the first ones for the
/// report, the last ones for output); false at end of file.
bool drain(int fd, std::string& into, std::size_t limit, bool keep_tail) {
  char buffer[4096];
  const ssize_t n = ::read(fd, buffer, sizeof buffer);
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  if (n == 0) return false;
  into.append(buffer, static_cast<std::size_t>(n));
  if (into.size() > limit) {
    if (keep_tail)
      into.erase(0, into.size() - limit);
    else
      into.resize(limit);
  }
  return true;
}

/// Reads both pipes until the child closes them or `end` passes; false on the deadline.
bool collect(int report_read, int output_read, steady::time_point end,
             probe_process_result& result) {
  pollfd fds[2] = {{report_read, POLLIN, 0}, {output_read, POLLIN, 0}};
  while (fds[0].fd >= 0 || fds[1].fd >= 0) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(end - steady::now());
    if (left.count() <= 0) return false;
    const int n = ::poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0 && errno != EINTR) fail("waiting for the plugin probe: {}", std::strerror(errno));
    if (n <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const bool open = i == 0 ? drain(fds[i].fd, result.report, report_limit, false)
                               : drain(fds[i].fd, result.output, output_limit, true);
      if (!open) fds[i].fd = -1;
    }
  }
  return true;
}

/// Waits for `pid` until `end`; false when it is still running then.
bool reap(pid_t pid, steady::time_point end, probe_process_result& result) {
  auto pause = std::chrono::microseconds(100);
  for (;;) {
    int status = 0;
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      result.how = WIFSIGNALED(status) ? probe_process_result::ending::signaled
                                       : probe_process_result::ending::exited;
      result.code = WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status);
      return true;
    }
    if (done < 0 && errno == EINTR) continue;
    if (done < 0) {
      result.how = probe_process_result::ending::vanished;
      return true;
    }
    if (steady::now() >= end) return false;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(10'000));
  }
}

}  // namespace

probe_process_result run_probe_process(const std::vector<std::string>& argv,
                                       std::chrono::milliseconds deadline) {
  const auto start = steady::now();
  const auto end = start + deadline;
  auto [report_read_fd, report_write_fd] = make_pipe();
  descriptor report_read(report_read_fd), report_write(report_write_fd);
  auto [output_read_fd, output_write_fd] = make_pipe();
  descriptor output_read(output_read_fd), output_write(output_write_fd);

  const pid_t pid = spawn(argv, report_write.get(), output_write.get());
  // Only the child holds the write ends now: end of file means it exited (or closed them).
  report_write.reset();
  output_write.reset();

  probe_process_result result;
  const bool finished =
      collect(report_read.get(), output_read.get(), end, result) && reap(pid, end, result);
  if (!finished) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    result.how = probe_process_result::ending::timed_out;
  }
  result.took = steady::now() - start;
  return result;
}

std::string describe_signal(int signal) {
  const char* abbreviation = sigabbrev_np(signal);
  const char* description = strsignal(signal);
  if (abbreviation == nullptr) return fmt::format("signal {}", signal);
  return fmt::format("SIG{} ({})", abbreviation, description != nullptr ? description : "");
}

}  // namespace troupe
