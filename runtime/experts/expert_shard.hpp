#pragma once

// The routed experts one expert shard owns, of every MoE layer of the model (the MTP blocks'
// included): their parameters and gradients, and the moe plugin's "experts" instances that
// compute the rows stages dispatch to them.
//
// NOTES: one instance per (layer, source), where a source is one copy of the layer's stage
// (DualPipe runs two copies of every stage; data-parallel replicas one each). Each copy
// accumulates into its own gradient buffers, and reduce_source_gradients() adds them in source
// order, so the result does not depend on the order in which requests arrive.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "runtime/exec/exec_context.hpp"
#include "runtime/experts/expert_messages.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/model/parameter_store.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/plugin/instance_swap.hpp"

namespace troupe {

class expert_shard {
 public:
  /// Per MoE layer (decoder and MTP), the routed experts this shard owns (ascending; every MoE
  /// layer of the model listed); `sources`: copies of each stage.
  expert_shard(const model_config& config, std::shared_ptr<const plugin_library> moe,
               std::map<std::int64_t, std::vector<std::int64_t>> layer_experts, int sources = 1,
               const std::string& moe_options = "{}");
  /// The same experts in every MoE layer.
  expert_shard(const model_config& config, std::shared_ptr<const plugin_library> moe,
               const std::vector<std::int64_t>& experts, int sources = 1,
               const std::string& moe_options = "{}");
  expert_shard(const expert_shard&) = delete;
  expert_shard& operator=(const expert_shard&) = delete;

  /// Per MoE layer, the experts this shard owns.
  const std::map<std::int64_t, std::vector<std::int64_t>>& layer_experts() const {
    return layer_experts_;
  }
  /// The MoE layers (decoder and MTP) whose experts this shard holds.
  const std::vector<std::int64_t>& layers() const { return layers_; }
  parameter_store& parameters() { return store_; }
  /// The moe library its instances run now (hot swaps change it).
  std::shared_ptr<const plugin_library> library() const;
  /// The parameters of routed expert `expert` of `layer` (empty when another shard owns it).
  std::vector<parameter*> parameters_of(std::int64_t layer, std::int64_t expert);
  /// True when no micro-batch is in flight (nothing saved for a backward).
  bool idle() const { return inputs_.empty(); }

  /// Runs one request; throws troupe::error (with the layer and micro-batch) when it fails.
  expert_reply handle(const exec_context& context, const expert_request& request);

  /// Adds the other sources' gradients into source 0's (the store's), in source order, and
  /// zeroes them.
  void reduce_source_gradients();
  void zero_grads(thread_pool* pool = nullptr);
  /// The moe plugin's instances (kind moe; none for other kinds), for a hot swap.
  std::vector<instance_slot> plugin_slots(plugin_kind kind);

 private:
  struct layer_copy {
    std::unique_ptr<layer_instance> instance;
    std::vector<tensor> grads;  // sources > 0: their own gradient buffers
  };
  layer_copy& copy_for(std::int64_t layer, std::int32_t source);

  model_config config_;
  std::map<std::int64_t, std::vector<std::int64_t>> layer_experts_;
  std::vector<std::int64_t> layers_;
  int sources_;
  parameter_store store_;
  std::map<std::pair<std::int64_t, std::int32_t>, layer_copy> copies_;
  // The rows of each (layer, source, micro-batch) in flight: the plugin reads them until backward.
  std::map<std::tuple<std::int64_t, std::int32_t, std::int64_t>, tensor> inputs_;
};

}  // namespace troupe
