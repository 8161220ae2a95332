// troupe-test-peer: the other process of the cross-process actor tests. It publishes an echo
// actor on 127.0.0.1 (a free port, printed on stdout) and stops by itself when its stdin closes,
// when it receives `stop`, or after 60 seconds.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include <caf/all.hpp>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/actor/messages.hpp"
#include "runtime/actor/send.hpp"

namespace {

caf::behavior echo(troupe::instrumented_actor* self) {
  // Anything that is not a tensor message is answered with what arrived, so a test can tell an
  // empty message (what CAF makes of an unregistered type) from a real one.
  self->set_default_handler(
      [](caf::scheduled_actor*, caf::message_view& view) -> caf::result<caf::message> {
        return caf::make_message(std::string("unexpected: ") +
                                 (view.content().empty() ? "empty message" : "a message"));
      });
  return {
      [](troupe::tensor_message& message) {
        // Double every f32 so the reply proves it was computed here.
        if (message.value.defined() && message.value.type() == troupe::dtype::f32) {
          troupe::tensor_message reply{message.value.clone()};
          for (std::int64_t i = 0; i < reply.value.numel(); ++i)
            reply.value.data_as<float>()[i] *= 2.0f;
          return reply;
        }
        return message;
      },
      [self](troupe::atoms::stop_atom) { self->quit(); },
  };
}

}  // namespace

int main() {
  troupe::actor_runtime runtime({1, true});
  auto actor = runtime.spawn("echo", echo);
  const auto port = runtime.publish(actor, "127.0.0.1", 0);
  std::printf("%u\n", static_cast<unsigned>(port));
  std::fflush(stdout);
  // The parent closes our stdin when it is done (or dies); stop then, or after a minute at most.
  std::thread watcher([&runtime, actor] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    char byte;
    fd_set fds;
    while (std::chrono::steady_clock::now() < deadline) {
      FD_ZERO(&fds);
      FD_SET(0, &fds);
      timeval tick{0, 200000};
      if (select(1, &fds, nullptr, nullptr, &tick) > 0 && read(0, &byte, 1) <= 0) break;
    }
    caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
    (void)runtime;
  });
  watcher.join();
  return 0;
}
