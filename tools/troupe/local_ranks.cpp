#include "tools/troupe/local_ranks.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "runtime/core/error.hpp"

namespace troupe::cli {

std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> words;
  std::string word;
  for (char c : all) {
    if (c == '\0') {
      words.push_back(word);
      word.clear();
    } else {
      word += c;
    }
  }
  return words;
}

std::uint16_t free_local_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0)
    fail("cannot find a free port on 127.0.0.1 for the rendezvous");
  ::close(fd);
  return ntohs(address.sin_port);
}

pid_t start_rank(int rank, int world, const std::string& rendezvous,
                 std::vector<std::string> arguments) {
  std::vector<char*> argv;
  for (auto& a : arguments) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) fail("cannot start rank {}: fork failed", rank);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setpgid(0, 0);
    setenv("TROUPE_RANK", std::to_string(rank).c_str(), 1);
    setenv("TROUPE_WORLD_SIZE", std::to_string(world).c_str(), 1);
    setenv("TROUPE_RENDEZVOUS", rendezvous.c_str(), 1);
    execv("/proc/self/exe", argv.data());
    std::perror("troupe: exec");
    std::_Exit(127);
  }
  return pid;
}

}  // namespace troupe::cli
