#include "runtime/serve/serving_swap.hpp"

#include <utility>

#include <fmt/format.h>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/experts/replicated_experts.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/plugin/instance_swap.hpp"
#include "runtime/plugin/registry.hpp"

namespace troupe {

namespace {

std::shared_ptr<const plugin_library>* library_of(model_plugins& plugins, plugin_kind role) {
  switch (role) {
    case plugin_kind::attention:
      return &plugins.attention;
    case plugin_kind::moe:
      return &plugins.moe;
    case plugin_kind::mtp:
      return &plugins.mtp;
    default:
      return nullptr;
  }
}

}  // namespace

/// What prepare built, per instance.
struct serving_swap::successors {
  plugin_kind role = plugin_kind::moe;
  std::vector<std::shared_ptr<const plugin_library>> libraries;
  std::vector<instance_swap> layers;
  std::vector<replicated_experts*> shards;  ///< the instances whose expert shards prepared theirs
  std::int64_t count = 0;
  bool committed = false;
  ~successors() {
    if (committed) return;
    for (replicated_experts* experts : shards) try {
        experts->abort_swap();
      } catch (const std::exception&) {
        // A shard that cannot be told keeps its successor until the next swap replaces it.
      }
  }
};

serving_swap::serving_swap(request_engine& engine, std::vector<controlled_instance> instances)
    : engine_(engine), instances_(std::move(instances)) {
  if (instances_.empty()) fail("serving_swap: no instance");
}

serving_swap::~serving_swap() = default;

std::shared_ptr<const plugin_library> serving_swap::running(plugin_kind role) const {
  std::lock_guard lock(mutex_);
  const auto* library = library_of(*instances_.front().plugins, role);
  return library != nullptr ? *library : nullptr;
}

std::int64_t serving_swap::prepare(plugin_kind role, const std::string& path) {
  abort();
  std::size_t slots = 0;
  for (const controlled_instance& i : instances_) slots += i.runner->plugin_slots(role).size();
  if (library_of(*instances_.front().plugins, role) == nullptr || !running(role) || slots == 0)
    throw nothing_to_swap(
        role == plugin_kind::mtp
            ? std::string("no MTP module runs here: the server decodes without "
                          "--speculative mtp")
            : fmt::format("this server's model uses no {} plugin", name_of(role)));
  // Loaded before any step is held: a library that does not load, crashes its probe or is of
  // another kind costs the running requests nothing.
  auto next = std::make_unique<successors>();
  next->role = role;
  plugin_load_options load;
  load.expected_kind = role;
  load.fresh_copy = true;
  for (const controlled_instance& i : instances_)
    next->libraries.push_back(i.registry->load(path, load));
  // NOTES: a server's attention plugin reads and writes the KV cache (ABI 1.2's forward_cached);
  // one without it would fail every step.
  if (role == plugin_kind::attention && !computes_cached(*next->libraries.front()))
    fail(
        "plugin '{}' ({}) has no cached forward (plugin ABI 1.2 forward_cached): it cannot "
        "decode over the KV cache",
        next->libraries.front()->name, path);
  engine_.hold_steps([&] {
    for (std::size_t i = 0; i < instances_.size(); ++i) {
      const controlled_instance& instance = instances_[i];
      if (instance.where.is_cuda()) cuda::use_device(instance.where.index);
      next->layers.emplace_back(instance.runner->plugin_slots(role), next->libraries[i]);
      next->count += static_cast<std::int64_t>(next->layers.back().size());
      if (role == plugin_kind::moe && instance.experts != nullptr) {
        next->shards.push_back(instance.experts);  // aborted if its prepare fails half-way
        next->count += instance.experts->prepare_swap(next->libraries[i], path);
      }
    }
  });
  const std::int64_t count = next->count;
  std::lock_guard lock(mutex_);
  prepared_ = std::move(next);
  return count;
}

double serving_swap::commit() {
  std::unique_ptr<successors> next;
  {
    std::lock_guard lock(mutex_);
    next = std::move(prepared_);
  }
  if (!next) fail("no swap is prepared");
  return engine_.hold_steps([&] {
    std::lock_guard lock(mutex_);  // running() reads the libraries
    next->committed = true;
    for (replicated_experts* experts : next->shards) experts->commit_swap();
    for (std::size_t i = 0; i < instances_.size(); ++i) {
      next->layers[i].commit();
      *library_of(*instances_[i].plugins, next->role) = next->libraries[i];
    }
  });
}

void serving_swap::abort() {
  std::unique_ptr<successors> dropped;
  std::lock_guard lock(mutex_);
  dropped = std::move(prepared_);
}

}  // namespace troupe
