#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace troupe {

/// Base of every exception troupe throws. `what()` is a complete message for a user: it names the
/// file, the place and the cause where there is one.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Throws troupe::error with a fmt-formatted message.
template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace troupe

/// Precondition check that stays on in release builds (DeepGEMM-style asserts on preconditions).
#define TROUPE_CHECK(condition, ...)                                                 \
  do {                                                                               \
    if (!(condition))                                                                \
      ::troupe::fail("{}:{}: check '{}' failed: {}", __FILE__, __LINE__, #condition, \
                     ::fmt::format(__VA_ARGS__));                                    \
  } while (false)
