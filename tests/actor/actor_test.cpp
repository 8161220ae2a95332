// The actor layer: spawning event-based and detached actors with metrics by role, a message that
// carries a tensor (zero-copy in a process, intact across processes), message counts by type,
// and the proof that an unregistered type bound for another process fails loudly.
#include <gtest/gtest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <caf/all.hpp>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/actor/messages.hpp"
#include "runtime/actor/send.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using troupe::tensor;
using troupe::tensor_message;

/// A type nobody registered.
struct unregistered_payload {
  int value = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, unregistered_payload& x) {
  return f(caf::meta::type_name("unregistered_payload"), x.value);
}

/// Waits until `condition` holds, up to 5 s.
template <class F>
bool eventually(F condition) {
  for (int i = 0; i < 500; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return condition();
}

TEST(ActorRuntime, SpawnsEventBasedAndDetachedActorsAndCountsThemByRole) {
  troupe::actor_runtime runtime({2, false});
  auto doubler = runtime.spawn("worker", [](troupe::instrumented_actor*) -> caf::behavior {
    return {[](int x) { return 2 * x; }};
  });
  auto blocking =
      runtime.spawn_detached("blocking", [](troupe::instrumented_actor* self) -> caf::behavior {
        return {[self](troupe::atoms::ping_atom) {
          std::this_thread::sleep_for(20ms);  // would stall a scheduler thread if not detached
          self->quit();
          return std::string("pong");
        }};
      });
  caf::scoped_actor self{runtime.system()};
  self->request(doubler, 5s, 21)
      .receive([](int y) { EXPECT_EQ(y, 42); }, [](caf::error& e) { FAIL() << caf::to_string(e); });
  self->request(blocking, 5s, troupe::atoms::ping_atom_v)
      .receive([](const std::string& reply) { EXPECT_EQ(reply, "pong"); },
               [](caf::error& e) { FAIL() << caf::to_string(e); });
  auto& metrics = runtime.metrics();
  EXPECT_EQ(metrics.actors_spawned_total("worker"), 1.0);
  EXPECT_EQ(metrics.actors_spawned_total("blocking"), 1.0);
  EXPECT_TRUE(eventually([&] { return metrics.actors_alive("blocking") == 0.0; }));
  EXPECT_EQ(metrics.actors_alive("worker"), 1.0);
  self->send_exit(doubler, caf::exit_reason::user_shutdown);
  EXPECT_TRUE(eventually([&] { return metrics.actors_alive("worker") == 0.0; }));
  EXPECT_GE(metrics.messages_received_total("ping"), 1.0);
  EXPECT_GE(metrics.messages_received_total("@i32"), 1.0);
}

TEST(ActorRuntime, ATensorMessageInOneProcessSharesItsStorage) {
  troupe::actor_runtime runtime({2, false});
  auto inspector = runtime.spawn("inspector", [](troupe::instrumented_actor*) -> caf::behavior {
    return {[](const tensor_message& message) {
      return reinterpret_cast<std::uintptr_t>(message.value.data());
    }};
  });
  tensor t = tensor::zeros(troupe::dtype::f32, {1024, 1024});  // 4 MiB: far above the inline limit
  caf::scoped_actor self{runtime.system()};
  troupe::send(self.ptr(), inspector, tensor_message{t});
  self->receive(
      [&](std::uintptr_t address) {
        EXPECT_EQ(address, reinterpret_cast<std::uintptr_t>(t.data()));
      },
      caf::after(5s) >> [] { FAIL() << "no reply"; });
  EXPECT_EQ(runtime.metrics().messages_sent_total("troupe.tensor_message"), 1.0);
  EXPECT_EQ(runtime.metrics().messages_received_total("troupe.tensor_message"), 1.0);
  self->send_exit(inspector, caf::exit_reason::user_shutdown);
}

TEST(ActorRuntime, PublishErrorsAreClear) {
  troupe::actor_runtime local({1, false});
  auto actor =
      local.spawn("x", [](troupe::instrumented_actor*) -> caf::behavior { return {[](int) {}}; });
  EXPECT_THROW(local.publish(actor, "127.0.0.1", 0), troupe::error);
  caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
  troupe::actor_runtime networked({1, true});
  try {
    networked.connect("127.0.0.1", 1);  // nothing listens on port 1
    FAIL() << "connecting to a closed port must fail";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:1"), std::string::npos) << e.what();
  }
}

/// The peer process (tests/actor/remote_peer.cpp), stopped by closing its stdin.
class remote_peer {
 public:
  remote_peer() {
    const char* program = std::getenv("TROUPE_TEST_PEER");
    if (program == nullptr)
      throw std::runtime_error("TROUPE_TEST_PEER is not set (run through meson test)");
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) throw std::runtime_error("pipe failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&actions, from_child[1], 1);
    posix_spawn_file_actions_addclose(&actions, to_child[1]);
    posix_spawn_file_actions_addclose(&actions, from_child[0]);
    char* argv[] = {const_cast<char*>(program), nullptr};
    if (posix_spawn(&pid_, program, &actions, nullptr, argv, environ) != 0)
      throw std::runtime_error("spawn failed");
    posix_spawn_file_actions_destroy(&actions);
    close(to_child[0]);
    close(from_child[1]);
    stdin_ = to_child[1];
    FILE* out = fdopen(from_child[0], "r");
    unsigned value = 0;
    if (std::fscanf(out, "%u", &value) != 1) throw std::runtime_error("the peer printed no port");
    std::fclose(out);
    port_ = static_cast<std::uint16_t>(value);
  }

  ~remote_peer() {
    close(stdin_);
    for (int i = 0; i < 100; ++i) {  // it stops within a second; kill it after 10
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(100ms);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }

  std::uint16_t port() const { return port_; }

 private:
  pid_t pid_ = 0;
  int stdin_ = -1;
  std::uint16_t port_ = 0;
};

TEST(CrossProcess, ATensorMessageCrossesIntactAndAnUnregisteredTypeFailsLoudly) {
  remote_peer peer;
  troupe::actor_runtime runtime({2, true});
  caf::actor remote = runtime.connect("127.0.0.1", peer.port());
  caf::scoped_actor self{runtime.system()};
  ASSERT_NE(remote.node(), runtime.system().node())
      << "the echo actor must live in the other process";

  // A registered message with a small tensor crosses and comes back computed on.
  tensor t = tensor::empty(troupe::dtype::f32, {3, 5});
  for (int i = 0; i < 15; ++i) t.data_as<float>()[i] = static_cast<float>(i) - 7.5f;
  troupe::send(self.ptr(), remote, tensor_message{t});
  self->receive(
      [&](const tensor_message& reply) {
        ASSERT_EQ(reply.value.shape(), t.shape());
        for (int i = 0; i < 15; ++i)
          EXPECT_EQ(reply.value.data_as<float>()[i], 2.0f * t.data_as<float>()[i]);
      },
      caf::after(10s) >> [] { FAIL() << "no reply from the other process"; });

  // An unregistered type: troupe::send throws before anything leaves the process.
  try {
    troupe::send(self.ptr(), remote, unregistered_payload{7});
    FAIL() << "sending an unregistered type to another process must throw";
  } catch (const troupe::unregistered_message_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("unregistered_payload"), std::string::npos) << message;
    EXPECT_NE(message.find("add_message_type"), std::string::npos) << message;
  }
  // Built-in CAF types and atoms need no registration; std::vector<std::int64_t> does.
  EXPECT_NO_THROW(troupe::send(self.ptr(), remote, std::string("hello")));
  self->receive([](const std::string& reply) { EXPECT_EQ(reply, "unexpected: a message"); },
                caf::after(10s) >> [] { FAIL() << "no reply"; });
  EXPECT_THROW(troupe::send(self.ptr(), remote, std::vector<std::int64_t>{1, 2}),
               troupe::unregistered_message_error);

  // A tensor over the inline limit must go over the data plane, not through CAF.
  try {
    troupe::send(self.ptr(), remote, tensor_message{tensor::zeros(troupe::dtype::f32, {256, 256})});
    FAIL() << "a 256 KiB tensor must not travel in an actor message between processes";
  } catch (const troupe::unregistered_message_error& e) {
    EXPECT_NE(std::string(e.what()).find("data plane"), std::string::npos) << e.what();
  }

  // What troupe::send prevents: plain CAF sends the unregistered type anyway, and the other
  // process receives an empty message (CAF only prints a line on stderr). The value 7 is lost.
  self->send(remote, unregistered_payload{7});
  std::string what_arrived;
  self->receive([&](const std::string& reply) { what_arrived = reply; }, caf::after(10s) >> [] {});
  EXPECT_EQ(what_arrived, "unexpected: empty message");

  troupe::send(self.ptr(), remote, troupe::atoms::stop_atom_v);
}

}  // namespace
