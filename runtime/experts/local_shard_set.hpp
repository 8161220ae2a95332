#pragma once

// A serving instance's expert shards as objects of its own process (expert_shard_set.hpp): the
// instance's thread computes each shard's rows in turn, and a re-placement copies experts
// between the shards in memory.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/experts/expert_shard.hpp"
#include "runtime/experts/expert_shard_set.hpp"

namespace troupe {

class local_shard_set : public expert_shard_set {
 public:
  /// Loads a shard's parameters (from the checkpoint) once its experts are known.
  using loader = std::function<void(parameter_store&)>;

  /// A shard per `placement.of_shard(s)`, each loaded by `load`.
  local_shard_set(const model_config& config, std::shared_ptr<const plugin_library> moe,
                  std::string moe_options, const expert_placement& placement, const loader& load,
                  const exec_context& context);

  expert_transport& transport() override { return *transport_; }
  void move_to(const expert_placement& target, replacement_report& report) override;
  std::int64_t prepare_swap(const std::shared_ptr<const plugin_library>& library,
                            const std::string& path) override;
  void commit_swap() override;
  void abort_swap() override;

 private:
  void use(std::vector<std::unique_ptr<expert_shard>> shards);

  model_config config_;
  std::string moe_options_;
  std::vector<std::unique_ptr<expert_shard>> shards_;
  std::vector<std::unique_ptr<expert_shard>> pending_;  // prepare_swap's, until commit or abort
  std::unique_ptr<local_expert_transport> transport_;
};

}  // namespace troupe
