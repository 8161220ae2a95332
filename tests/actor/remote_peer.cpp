// troupe-test-peer: rank 1 of a two-process job for the cross-process actor tests. It joins the
// cluster at the rendezvous port given as its argument, exposes an echo actor as "echo",
// publishes what rank 0 published as "greeting" under "greeting back", and leaves when rank 0
// finishes the job (or after 60 seconds without a rendezvous).

#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/cluster/cluster.hpp"
#include "tests/actor/test_messages.hpp"

using namespace troupe;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: troupe-test-peer RENDEZVOUS_PORT\n");
    return 2;
  }
  try {
    actor_runtime runtime({1, true});
    cluster_options options;
    options.rank = 1;
    options.world = 2;
    options.hosts = {"test0", "test1"};
    options.rendezvous_port = static_cast<std::uint16_t>(std::stoi(argv[1]));
    cluster job(runtime, options);
    job.expose("echo", runtime.spawn("echo", [](event_actor&) {
      return behavior()
          .on<test::echo_request>([](test::echo_request& request) {
            test::echo_reply reply{request.value.clone(),
                                   std::string(request.text.rbegin(), request.text.rend())};
            for (std::int64_t i = 0; i < reply.value.numel(); ++i)
              reply.value.data_as<float>()[i] *= 2.0f;
            return reply;
          })
          .on<test::fail_request>(
              [](test::fail_request& request) -> bool { fail("asked to fail: {}", request.why); });
    }));
    // Declared by this program (messages register where code names them) but handled by nobody.
    (void)message_type<test::unhandled_request>();
    job.barrier(std::chrono::seconds(30));
    // What rank 0 published (an NCCL id, in the test) goes back to it under another name.
    job.publish("greeting back", job.fetch("greeting", 0, std::chrono::seconds(30)));
    const auto [code, why] = job.wait_for_finish();
    return code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe-test-peer: %s\n", e.what());
    return 1;
  }
}
