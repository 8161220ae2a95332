// troupe's actor API: spawning actors on shared and own threads with metrics by role, typed
// requests and one-way messages, replies given later, failures that reach the asker with the
// handler's own message, deadlines, actors that stopped, messages counted by name, a tensor
// shared within a process, and a typed message with a tensor crossing to another process of a
// job (its declaration is its wire format) with failures coming back intact.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <numeric>
#include <thread>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/cluster/cluster.hpp"
#include "runtime/transport/nccl_communicator.hpp"
#include "tests/actor/test_messages.hpp"
#include "tests/support/free_port.hpp"

extern char** environ;

namespace troupe::test {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

struct add_request {
  TROUPE_REQUEST("test.add", std::int64_t);
  std::int64_t a = 0, b = 0;
  auto fields() { return std::tie(a, b); }
};

struct note {
  TROUPE_MESSAGE("test.note");
  std::int64_t value = 0;
  auto fields() { return std::tie(value); }
};

struct address_request {
  TROUPE_REQUEST("test.address", std::int64_t);
  tensor value;
  auto fields() { return std::tie(value); }
};

/// Another type under test.note's name.
struct impostor {
  TROUPE_MESSAGE("test.note");
  auto fields() { return std::tie(); }
};

/// Declared in this program only: the peer process cannot read it.
struct private_request {
  TROUPE_REQUEST("test.private", bool);
  auto fields() { return std::tie(); }
};

/// Waits until `condition` holds, up to 5 s.
template <class F>
bool eventually(F condition) {
  for (int i = 0; i < 500; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return condition();
}

std::string failure_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const error& e) {
    return e.what();
  }
  return "no failure";
}

TEST(Actors, AnswerRequestsOnSharedAndOwnThreadsAndAreCountedByRoleAndMessage) {
  actor_runtime runtime({2, false});
  auto adder = runtime.spawn("worker", [](event_actor&) {
    return behavior().on<add_request>([](add_request& r) { return r.a + r.b; });
  });
  auto blocking = runtime.spawn(
      "blocking",
      [](event_actor& self) {
        return behavior().on<add_request>([&self](add_request& r) {
          std::this_thread::sleep_for(20ms);  // would stall a scheduler thread if not its own
          self.quit();
          return r.a * r.b;
        });
      },
      actor_thread::own);
  scoped_actor self(runtime);
  EXPECT_EQ(self.ask(adder, add_request{20, 22}, "adder", 5s), 42);
  EXPECT_EQ(self.ask(blocking, add_request{6, 7}, "blocking", 5s), 42);
  auto& metrics = runtime.metrics();
  EXPECT_EQ(metrics.actors_spawned_total("worker"), 1.0);
  EXPECT_EQ(metrics.actors_spawned_total("blocking"), 1.0);
  EXPECT_TRUE(eventually([&] { return metrics.actors_alive("blocking") == 0.0; }));
  EXPECT_EQ(metrics.actors_alive("worker"), 1.0);
  EXPECT_EQ(metrics.messages_sent_total("test.add"), 2.0);
  EXPECT_EQ(metrics.messages_received_total("test.add"), 2.0);
  runtime.stop(adder);
  EXPECT_TRUE(eventually([&] { return metrics.actors_alive("worker") == 0.0; }));
}

TEST(Actors, OneWayMessagesAndRepliesGivenLater) {
  actor_runtime runtime({2, false});
  // Holds each request until a note arrives, then answers it with the note's value.
  auto waiter = runtime.spawn("waiter", [](event_actor&) {
    auto held = std::make_shared<std::vector<reply_promise<std::int64_t>>>();
    return behavior()
        .on<add_request>(
            [held](add_request&, reply_promise<std::int64_t> answer) { held->push_back(answer); })
        .on<note>([held](note& n) {
          for (auto& answer : *held) answer.deliver(n.value);
          held->clear();
        });
  });
  std::atomic<std::int64_t> answer{0};
  std::thread asker([&] {
    scoped_actor self(runtime);
    answer = self.ask(waiter, add_request{1, 2}, "waiter", 5s);
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(answer.load(), 0) << "the request was answered before the note came";
  runtime.tell(waiter, note{7});
  asker.join();
  EXPECT_EQ(answer.load(), 7);
  runtime.stop(waiter);
}

TEST(Actors, AFailingHandlerFailsTheRequestWithItsOwnMessage) {
  actor_runtime runtime({2, false});
  auto failing = runtime.spawn("failing", [](event_actor&) {
    return behavior()
        .on<fail_request>([](fail_request& r) -> bool { fail("cannot: {}", r.why); })
        // A promise dropped without an answer fails the request instead of leaving it hanging.
        .on<add_request>([](add_request&, reply_promise<std::int64_t>) {});
  });
  scoped_actor self(runtime);
  EXPECT_EQ(failure_of([&] { self.ask(failing, fail_request{"the disk is full"}, "saving", 5s); }),
            "saving: cannot: the disk is full");
  EXPECT_THAT(failure_of([&] { self.ask(failing, add_request{}, "adding", 5s); }),
              HasSubstr("adding: the actor dropped the request without an answer"));
  // A message the actor has no handler for.
  EXPECT_THAT(failure_of([&] { self.ask(failing, unhandled_request{}, "asking", 5s); }),
              HasSubstr("the failing actor does not handle 'test.unhandled' messages"));
  runtime.stop(failing);
}

TEST(Actors, AskEachTakesRepliesInOrderAndNamesWhoMissedTheDeadline) {
  actor_runtime runtime({2, false});
  auto make = [&](std::chrono::milliseconds delay) {
    return runtime.spawn(
        "member",
        [delay](event_actor&) {
          return behavior().on<add_request>([delay](add_request& r) {
            std::this_thread::sleep_for(delay);
            return r.a + r.b;
          });
        },
        actor_thread::own);
  };
  const named_actors members{{"fast", make(0ms)}, {"slower", make(30ms)}, {"slow", make(2s)}};
  scoped_actor self(runtime);
  std::vector<std::string> order;
  const named_actors first_two(members.begin(), members.begin() + 2);
  self.ask_each(
      "adding", first_two,
      [](const std::string& name) {
        return add_request{1, name == "fast"};
      },
      [&](const std::string& name, std::int64_t& sum) {
        order.push_back(fmt::format("{}={}", name, sum));
      });
  EXPECT_EQ(order, (std::vector<std::string>{"fast=2", "slower=1"}));
  EXPECT_EQ(failure_of([&] {
              self.ask_each(
                  "adding", members, [](const std::string&) { return add_request{}; },
                  [](const std::string&, std::int64_t&) {}, 200ms);
            }),
            "adding of slow: no answer within 0.2 s");
  for (const auto& [name, actor] : members) runtime.stop(actor);
}

TEST(Actors, AskingAnActorThatStoppedFailsAtOnce) {
  actor_runtime runtime({2, false});
  auto gone = runtime.spawn("gone", [](event_actor&) {
    return behavior().on<add_request>([](add_request& r) { return r.a; });
  });
  runtime.stop(gone);
  EXPECT_TRUE(eventually([&] { return runtime.metrics().actors_alive("gone") == 0.0; }));
  scoped_actor self(runtime);
  EXPECT_THAT(failure_of([&] { self.ask(gone, add_request{}, "asking gone", 5s); }),
              HasSubstr("asking gone: the actor is no longer running"));
}

TEST(Actors, EventActorsAskEachOtherAndGatherReplies) {
  actor_runtime runtime({2, false});
  std::vector<actor_ref> members;
  for (int i = 0; i < 3; ++i)
    members.push_back(runtime.spawn("member", [i](event_actor&) {
      return behavior().on<add_request>([i](add_request& r) { return r.a + i; });
    }));
  // Asks every member and answers with the sum of their replies (the balancer's shape).
  auto gatherer = runtime.spawn("gatherer", [members](event_actor& self) {
    return behavior().on<add_request>(
        [&self, members](add_request& r, reply_promise<std::int64_t> done) {
          self.ask_each(
              members, add_request{r.a, 0},
              [done](std::vector<std::int64_t>& replies) mutable {
                done.deliver(replies[0] * 100 + replies[1] * 10 + replies[2]);
              },
              [done](const std::string& why) mutable { done.fail(why); });
        });
  });
  scoped_actor self(runtime);
  EXPECT_EQ(self.ask(gatherer, add_request{1, 0}, "gathering", 5s), 123);
  for (const auto& m : members) runtime.stop(m);
  runtime.stop(gatherer);
}

TEST(Actors, ATensorInAMessageSharesItsStorageWithinAProcess) {
  actor_runtime runtime({2, false});
  auto inspector = runtime.spawn("inspector", [](event_actor&) {
    return behavior().on<address_request>([](address_request& r) {
      return static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(r.value.data()));
    });
  });
  tensor t = tensor::zeros(dtype::f32, {1024, 1024});  // 4 MiB
  scoped_actor self(runtime);
  EXPECT_EQ(self.ask(inspector, address_request{t}, "inspecting", 5s),
            static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(t.data())));
  runtime.stop(inspector);
}

TEST(Messages, AreFoundByNameAndTwoTypesCannotShareOne) {
  const message_type_info& add = message_type<add_request>();
  EXPECT_EQ(find_message_type("test.add"), &add);
  ASSERT_NE(add.reply, nullptr);
  EXPECT_EQ(add.reply->name, "int64");
  EXPECT_EQ(message_type<note>().reply, nullptr);
  EXPECT_THAT(failure_of([] { message_type<impostor>(); }),
              HasSubstr("two message types are called 'test.note'"));
}

TEST(Messages, RoundTripThroughTheirWireFormat) {
  echo_request original{tensor::zeros(dtype::f32, {2, 3}), "hello"};
  original.value.data_as<float>()[4] = 2.5f;
  const actor_names names;
  wire_writer writer(&names);
  message_type<echo_request>().write(writer, &original);
  ASSERT_EQ(writer.tensors().size(), 1u);
  wire_reader reader(writer.body(), writer.tensors(), &names);
  auto copy = std::static_pointer_cast<echo_request>(message_type<echo_request>().read(reader));
  EXPECT_TRUE(reader.finished());
  EXPECT_EQ(copy->text, "hello");
  EXPECT_EQ(copy->value.data_as<float>()[4], 2.5f);
  // A body cut short, or one that claims more elements than it holds, is malformed.
  std::vector<std::uint8_t> short_body(writer.body().begin(), writer.body().end() - 3);
  wire_reader cut(short_body, writer.tensors(), &names);
  EXPECT_THAT(failure_of([&] { message_type<echo_request>().read(cut); }), HasSubstr("malformed"));
  std::vector<std::uint8_t> huge(writer.body());
  huge[1] = 0xff;  // the string's length, far beyond the body
  wire_reader lying(huge, writer.tensors(), &names);
  EXPECT_THAT(failure_of([&] { message_type<echo_request>().read(lying); }),
              HasSubstr("malformed"));
}

/// Rank 1 of a two-process job (tests/actor/remote_peer.cpp); it leaves when rank 0 finishes.
class peer_process {
 public:
  explicit peer_process(std::uint16_t port) {
    const char* program = std::getenv("TROUPE_TEST_PEER");
    if (program == nullptr) throw std::runtime_error("TROUPE_TEST_PEER is not set (meson test)");
    const std::string port_text = std::to_string(port);
    char* argv[] = {const_cast<char*>(program), const_cast<char*>(port_text.c_str()), nullptr};
    if (posix_spawn(&pid_, program, nullptr, nullptr, argv, environ) != 0)
      throw std::runtime_error("cannot start the peer process");
  }
  ~peer_process() {
    for (int i = 0; i < 100; ++i) {  // it leaves within a second of finish(); kill it after 10
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(100ms);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }

 private:
  pid_t pid_ = 0;
};

TEST(CrossProcess, ATypedMessageWithATensorCrossesAndFailuresComeBackIntact) {
  const std::uint16_t port = free_tcp_port();
  peer_process peer(port);
  actor_runtime runtime({2, true});
  cluster_options options;
  options.rank = 0;
  options.world = 2;
  options.hosts = {"test0", "test1"};
  options.rendezvous_port = port;
  options.rendezvous_timeout = 30s;
  cluster job(runtime, options);
  const actor_ref echo = job.remote("echo", 1);
  // A real NCCL unique id where NCCL can be loaded (making one needs no GPU), else 128 bytes.
  std::vector<std::uint8_t> id(128);
  std::iota(id.begin(), id.end(), std::uint8_t{7});
  if (nccl_communicator::available()) id = nccl_communicator::make_id();
  job.barrier(30s);
  // Published after the peer may have asked for it: the peer asks until it comes.
  std::this_thread::sleep_for(100ms);
  job.publish("greeting", id);
  EXPECT_EQ(job.fetch("greeting back", 1, 30s), id) << "the id through CAF and back";
  EXPECT_EQ(job.fetch("greeting", 0, 1s), id) << "this process's own";
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(failure_of([&] { job.fetch("never published", 1, 500ms); }),
              HasSubstr("rank 0: rank 1 (test1) did not publish 'never published' within 0.5 s"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  {
    scoped_actor self(runtime);
    // A tensor far above anything CAF should carry: it goes over UCX, the rest through CAF.
    tensor t = tensor::empty(dtype::f32, {256, 257});
    for (std::int64_t i = 0; i < t.numel(); ++i)
      t.data_as<float>()[i] = static_cast<float>(i % 97) - 7.5f;
    const echo_reply reply = self.ask(echo, echo_request{t, "troupe"}, "echo", 30s);
    EXPECT_EQ(reply.text, "epuort");
    ASSERT_EQ(reply.value.shape(), t.shape());
    for (std::int64_t i = 0; i < t.numel(); ++i)
      ASSERT_EQ(reply.value.data_as<float>()[i], 2.0f * t.data_as<float>()[i]) << i;
    EXPECT_EQ(failure_of([&] { self.ask(echo, fail_request{"on purpose"}, "failing", 30s); }),
              "failing: asked to fail: on purpose");
    // The peer declares this message but its echo actor has no handler for it.
    EXPECT_THAT(failure_of([&] { self.ask(echo, unhandled_request{}, "unhandled", 30s); }),
                HasSubstr("unhandled: the echo actor does not handle 'test.unhandled' messages"));
    // The peer never declared this one: nobody there can read it.
    EXPECT_THAT(failure_of([&] { self.ask(echo, private_request{}, "private", 30s); }),
                HasSubstr("rank 1 does not know the message 'test.private'"));
  }
  job.finish(0, "");
}

}  // namespace
}  // namespace troupe::test
