#include "runtime/actor/actor_runtime.hpp"

#include <map>
#include <mutex>
#include <thread>

#include <caf/actor_system.hpp>
#include <caf/io/middleman.hpp>

#include "runtime/actor/message_types.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

namespace {

struct runtime_table {
  std::mutex mutex;
  std::map<const caf::actor_system*, actor_runtime*> runtimes;
};

runtime_table& runtimes() {
  static runtime_table table;
  return table;
}

}  // namespace

actor_runtime::actor_runtime(actor_runtime_options options,
                             std::shared_ptr<metrics_registry> metrics)
    : config_(std::make_unique<caf::actor_system_config>()), metrics_(std::move(metrics)) {
  const int threads = options.scheduler_threads > 0
                          ? options.scheduler_threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  config_->set("scheduler.max-threads", static_cast<std::size_t>(threads));
  register_message_types(*config_);
  if (options.network) config_->load<caf::io::middleman>();
  system_ = std::make_unique<caf::actor_system>(*config_);
  std::lock_guard lock(runtimes().mutex);
  runtimes().runtimes[system_.get()] = this;
}

actor_runtime::~actor_runtime() {
  system_->await_all_actors_done();
  {
    std::lock_guard lock(runtimes().mutex);
    runtimes().runtimes.erase(system_.get());
  }
  system_.reset();
}

actor_runtime* actor_runtime::of(const caf::actor_system& system) {
  std::lock_guard lock(runtimes().mutex);
  auto it = runtimes().runtimes.find(&system);
  return it == runtimes().runtimes.end() ? nullptr : it->second;
}

void actor_runtime::track(std::string_view role, const caf::actor& handle) {
  auto metrics = metrics_;
  std::string label(role);
  metrics->actor_spawned(label);
  handle->attach_functor([metrics, label](const caf::error&) { metrics->actor_exited(label); });
}

std::uint16_t actor_runtime::publish(const caf::actor& actor, const std::string& address,
                                     std::uint16_t port) {
  if (!system_->has_middleman())
    fail("cannot publish an actor on {}:{}: the actor runtime was started without networking",
         address, port);
  auto result = system_->middleman().publish(actor, port, address.c_str(), true);
  if (!result)
    fail("cannot publish an actor on {}:{}: {}", address, port, system_->render(result.error()));
  return *result;
}

caf::actor actor_runtime::connect(const std::string& host, std::uint16_t port) {
  if (!system_->has_middleman())
    fail("cannot reach {}:{}: the actor runtime was started without networking", host, port);
  auto result = system_->middleman().remote_actor(host, port);
  if (!result)
    fail("cannot reach the actor at {}:{}: {}", host, port, system_->render(result.error()));
  return *result;
}

}  // namespace troupe
