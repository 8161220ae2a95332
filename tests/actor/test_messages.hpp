#pragma once

// Messages of the actor tests, shared with the peer process (remote_peer.cpp).

#include <cstdint>
#include <string>
#include <tuple>

#include "runtime/actor/message.hpp"

namespace troupe::test {

struct echo_reply {
  TROUPE_MESSAGE("test.echo_reply");
  tensor value;
  std::string text;
  auto fields() { return std::tie(value, text); }
};

/// Answered with the tensor's f32 values doubled and the text reversed.
struct echo_request {
  TROUPE_REQUEST("test.echo", echo_reply);
  tensor value;
  std::string text;
  auto fields() { return std::tie(value, text); }
};

/// Its handler throws "asked to fail: WHY".
struct fail_request {
  TROUPE_REQUEST("test.fail", bool);
  std::string why;
  auto fields() { return std::tie(why); }
};

/// No actor handles it.
struct unhandled_request {
  TROUPE_REQUEST("test.unhandled", bool);
  auto fields() { return std::tie(); }
};

}  // namespace troupe::test
