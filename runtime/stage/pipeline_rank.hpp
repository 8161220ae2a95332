#pragma once

// The work of one pipeline rank, without the actor around it: the stage chunks it holds (one,
// or two under DualPipe: stage r and stage PP-1-r), their parameters, gradients and optimizer
// state, and the execution of its ops of a schedule plan. Ops run in plan order, each as soon as
// its input (tokens, the previous stage's activation, the next stage's gradient) is there;
// results for other stages come back as transfers for the caller to deliver.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "runtime/exec/exec_context.hpp"
#include "runtime/experts/sharded_experts.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/optim/adamw.hpp"
#include "runtime/optim/gradient_norm.hpp"
#include "runtime/schedule/schedule_plan.hpp"
#include "runtime/stage/async_snapshot.hpp"
#include "runtime/stage/stage_messages.hpp"
#include "runtime/topology/topology.hpp"

namespace troupe {
class hf_checkpoint;
}

namespace troupe {

/// A stage chunk: one copy of one stage.
struct stage_chunk {
  std::int32_t stage = 0;
  std::int32_t copy = 0;
  std::unique_ptr<sharded_experts> experts;  ///< null: the stage computes its routed experts
  std::unique_ptr<model_runner> runner;
  std::unique_ptr<adamw> optimizer;
};

class pipeline_rank {
 public:
  /// A rank computing where its chunks' parameters live: with `context` (the process's) on the
  /// host, or with a context of its own on their GPU (its stream, `context`'s pool and GEMM
  /// provider; where that is the host's BLAS default, the runtime's cuBLASLt GEMM in the
  /// precision of `builtin_gemm`: fp32 or bf16).
  pipeline_rank(std::int32_t rank, std::vector<stage_chunk> chunks, const exec_context& context,
                precision builtin_gemm = precision::fp32);

  std::int32_t rank() const { return rank_; }
  std::vector<stage_chunk>& chunks() { return chunks_; }

  /// Starts a step: `inputs` holds every micro-batch of the step (this replica's). A forward-only
  /// step (evaluation, serving) runs the plan's forwards alone and keeps nothing for backward.
  void begin_step(std::shared_ptr<const schedule_plan> plan, std::vector<micro_batch_input> inputs,
                  float loss_scale, bool forward_only = false);
  /// An activation or gradient from another rank (it may come before begin_step).
  void deliver(stage_transfer transfer);
  /// Runs ops while their inputs are there; returns (destination rank, transfer) pairs.
  std::vector<std::pair<std::int32_t, stage_transfer>> advance();
  bool finished() const { return plan_ != nullptr && next_op_ == plan_->ops(rank_).size(); }
  rank_step_report take_report();

  /// The squared norm of the gradients of parameters not in `replicated` (parameters several
  /// chunks or ranks hold, reduced elsewhere), and the first non-finite gradient of any.
  gradient_summary summarize_gradients(const std::set<std::string>& replicated);
  /// The gradient tensors of `replicated` parameters this rank holds, chunk by chunk.
  std::vector<std::pair<std::string, tensor>> gradients_of(const std::set<std::string>& replicated);
  /// AdamW on every chunk, then zeroed gradients. `step` counts from 1.
  void optimize(double lr, double grad_scale, std::int64_t step);
  /// ZeRO-1: each chunk's AdamW keeps the moments of `sharding`'s ranges of the replicated
  /// parameters only (before the first step).
  void keep_ranges(const zero_sharding& sharding);
  /// The gradient (`gradient`) or the value of parameter `name` in chunk `chunk`.
  tensor tensor_of(std::int32_t chunk, const std::string& name, bool gradient);
  /// Bytes of the AdamW moments of every chunk.
  std::int64_t optimizer_bytes() const;
  /// Every instance of a plugin of `kind` in this rank's chunks, for a hot swap.
  std::vector<instance_slot> plugin_slots(plugin_kind kind);
  /// The precision of the runtime's own GEMM on this rank, what it computes with while its
  /// process runs no GEMM plugin: fp32 (BLAS on the host, cuBLASLt FP32 on a GPU) or bf16
  /// (cuBLASLt BF16 on the tensor cores, on a GPU only).
  precision builtin_gemm() const { return builtin_gemm_; }
  /// Throws, naming the rank, where this rank cannot compute with the built-in GEMM in `p`:
  /// bf16 on the host (which has no BF16 GEMM), or a precision the runtime has no GEMM of.
  void check_builtin_gemm(precision p) const;
  /// Switches the built-in GEMM to `p` (checked first): a hot swap of the gemm role to the
  /// built-in, at a step boundary.
  void use_builtin_gemm(precision p);
  /// Writes the balancer's router biases into the MoE layers this rank holds (the parameters of
  /// role router bias, by layer).
  void set_router_biases(const std::map<std::int64_t, std::vector<float>>& biases);
  /// Where each MoE layer's routed experts are computed from now on (a rebalance moved some):
  /// per layer, the experts of each shard. Between steps only.
  void set_expert_placement(
      const std::map<std::int64_t, std::vector<std::vector<std::int64_t>>>& layers);
  /// The checkpoint names of the router biases of the MoE layers this rank holds, by layer.
  std::map<std::int64_t, std::string> router_bias_names() const;

  /// Tensors under their checkpoint names whose names are in `owned` (each name is written by
  /// one holder only).
  std::vector<std::pair<std::string, tensor>> checkpoint_tensors(
      const std::set<std::string>& owned) const;
  /// Copies of the owned trainable parameters (an EMA snapshot), on the host.
  std::vector<std::pair<std::string, tensor>> snapshot(const std::set<std::string>& owned) const {
    return copies_of(owned, true);
  }
  /// Whether snapshots are asynchronous (parameters on a GPU: async_snapshot.hpp): start one
  /// after the optimizer step, take it later.
  bool asynchronous_snapshots() const { return snapshots_ != nullptr; }
  /// Whether a snapshot can start without waiting for the EMA actor (GPU ranks).
  bool snapshot_can_start() const { return snapshots_ != nullptr && snapshots_->can_start(); }
  /// Allocates the pinned memory the snapshots of the owned trainable parameters copy into (GPU
  /// ranks; at build time, before step 1).
  void prepare_snapshots(const std::set<std::string>& owned);
  /// Starts copying the owned trainable parameters to the host (GPU ranks).
  void start_snapshot(const std::set<std::string>& owned);
  /// The started snapshot, once copied (waiting for the copy if `wait`); nothing when none is
  /// pending or (without `wait`) its copy is still running.
  std::optional<std::vector<std::pair<std::string, tensor>>> take_snapshot(bool wait);
  /// Copies of the owned buffers (router biases), on the host.
  std::vector<std::pair<std::string, tensor>> buffers(const std::set<std::string>& owned) const {
    return copies_of(owned, false);
  }
  /// The optimizer moments of owned parameters, and the pieces of the ranges this rank keeps
  /// under ZeRO-1.
  std::vector<std::pair<std::string, tensor>> optimizer_state(
      const std::set<std::string>& owned) const;
  /// Loads weights and moments (every chunk takes what it holds from the given tensors).
  void load(const hf_checkpoint& weights,
            const std::vector<std::pair<std::string, tensor>>& moments);

 private:
  /// The owned trainable parameters' values, in the order snapshots copy them.
  std::vector<std::pair<std::string, tensor>> snapshot_values(
      const std::set<std::string>& owned) const;
  using input_key = std::tuple<bool, std::int32_t, std::int32_t, std::int64_t>;
  stage_chunk& chunk(std::int32_t stage, std::int32_t copy);
  /// Copies of the owned trainable parameters, or of the owned buffers; each name once.
  std::vector<std::pair<std::string, tensor>> copies_of(const std::set<std::string>& owned,
                                                        bool trainable) const;
  bool ready(const pipeline_op& op) const;
  bool ready_forward(const stage_work& w) const;
  bool ready_backward(const stage_work& w) const;
  void run_forward(const stage_work& w, std::vector<std::pair<std::int32_t, stage_transfer>>& out);
  void run_backward(const stage_work& w, troupe_backward_part part,
                    std::vector<std::pair<std::int32_t, stage_transfer>>& out);

  std::int32_t rank_;
  std::vector<stage_chunk> chunks_;
  /// The GPU context follows the process context's GEMM provider (a hot swap to or from FP8
  /// replaces it there) and, under the host's default, the built-in's precision, before every
  /// forward, backward and optimizer step.
  void follow_gemm_provider();

  const exec_context& host_context_;
  std::unique_ptr<exec_context> gpu_context_;  ///< when the chunks live on a GPU
  const exec_context& context_;
  std::unique_ptr<async_snapshot> snapshots_;  ///< GPU ranks
  precision builtin_gemm_ = precision::fp32;
  std::shared_ptr<const schedule_plan> plan_;
  std::vector<micro_batch_input> inputs_;
  float loss_scale_ = 1.0f;
  bool forward_only_ = false;
  std::size_t next_op_ = 0;
  std::map<input_key, tensor> arrived_;
  rank_step_report report_;
};

}  // namespace troupe
