#pragma once

// Whole buffers through a pipe or socket between the processes a benchmark forks.

#include <unistd.h>

#include <cstddef>
#include <string>

#include "runtime/core/error.hpp"

namespace troupe::cli {

/// Writes all `n` bytes; throws troupe::error "`who`: the pipe ... broke" when the other end is
/// gone.
inline void write_all(int fd, const void* data, std::size_t n, const std::string& who) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w <= 0) fail("{}: the pipe to the other process broke", who);
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// Reads exactly `n` bytes; throws as write_all when the other end closes first.
inline void read_all(int fd, void* data, std::size_t n, const std::string& who) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r <= 0) fail("{}: the pipe to the other process broke", who);
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}

}  // namespace troupe::cli
