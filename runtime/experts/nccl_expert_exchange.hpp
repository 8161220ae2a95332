#pragma once

// Expert parallelism between GPUs over NCCL, as DeepSeek-V3 runs it: each rank of a group (one
// process per GPU) holds part of a MoE layer's routed experts; a dispatch sends every token row
// to the rank that holds its expert, in FP8 (E4M3 with one scale per 1x128 tile) or BF16, and a
// combine brings the experts' outputs back in BF16. Both are all-to-all-v over grouped NCCL
// send/receive, with the per-peer counts exchanged first (expert_exchange_plan.hpp).
//
//   nccl_expert_exchange ep(comm, ordinal, layout);
//   const auto plan = ep.plan(counts);                       // collective: the counts
//   tensor x_e = ep.dispatch(plan, x_grouped, wire_precision::fp8);
//   tensor y_e = run_my_experts(x_e, plan.expert_rows);      // grouped GEMMs
//   tensor y   = ep.combine(plan, y_e, wire_precision::bf16);
//   // backward: dy_e = ep.dispatch(plan, dy, bf16); dx = ep.combine(plan, dx_e, bf16)
//
// Rows are FP32 or BF16 [R, H] on the communicator's GPU going in and FP32 coming out
// (dispatch_encoded keeps FP8 codes for an FP8 GEMM); the wire precision is what crosses NVLink.
// Every call is collective (every rank of the group calls it, in the same order) and returns when
// the rows have arrived; a rank that died or hangs fails the call within the communicator's
// deadline.

#include <cstdint>
#include <span>

#include "runtime/experts/expert_exchange_plan.hpp"
#include "runtime/experts/expert_payload.hpp"
#include "runtime/tensor/tensor.hpp"
#include "runtime/transport/nccl_communicator.hpp"

namespace troupe {

class nccl_expert_exchange {
 public:
  /// Bytes that crossed to other ranks (payload: codes, scales, counts), and rows.
  struct traffic {
    std::int64_t bytes_sent = 0;
    std::int64_t bytes_received = 0;
    std::int64_t rows_sent = 0;  ///< token rows dispatched to other ranks
  };

  /// `comm` (on cuda:`ordinal`) is the expert-parallel group, one rank per layout rank.
  nccl_expert_exchange(nccl_communicator& comm, int ordinal, expert_rank_layout layout);

  const expert_rank_layout& layout() const { return layout_; }

  /// Collective: sends every peer this rank's row counts of the peer's experts and receives its
  /// own; `counts[e]` rows of each expert e, ascending. Throws troupe::error on a malformed count.
  expert_exchange_plan plan(std::span<const std::int64_t> counts);

  /// Collective: `rows` ([plan.token_rows, H], FP32 or BF16, grouped by expert) to the ranks of
  /// their experts in `wire` precision; returns this rank's experts' rows [plan.received_rows, H]
  /// FP32, expert by expert (plan.expert_rows), within an expert by source rank, then row.
  tensor dispatch(const expert_exchange_plan& plan, const tensor& rows, wire_precision wire);
  /// The same without decoding: the rows as they crossed (FP8 codes and their 1x128 scales, or
  /// BF16), in the expert side's order: what an FP8 grouped GEMM reads directly.
  encoded_rows dispatch_encoded(const expert_exchange_plan& plan, const tensor& rows,
                                wire_precision wire);

  /// Collective: the reverse of dispatch: `rows` ([plan.received_rows, H], FP32 or BF16, in
  /// dispatch's output order) back to their ranks in `wire` precision; returns
  /// [plan.token_rows, H] FP32 in the token side's order.
  tensor combine(const expert_exchange_plan& plan, const tensor& rows, wire_precision wire);

  const traffic& sent() const { return traffic_; }

 private:
  /// Encodes `rows` in `wire`, reorders them by `source` (an index on the GPU; undefined: as they
  /// are) and exchanges them: what came, in the receive buffer's order ([out_rows, ...] values,
  /// and scales for FP8).
  encoded_rows move(const tensor& rows, wire_precision wire,
                    std::span<const std::int64_t> send_rows,
                    std::span<const std::int64_t> receive_rows, const tensor& source,
                    std::int64_t out_rows);
  /// `rows` decoded to FP32, reordered by `landing` (undefined: as they are).
  tensor decode(const encoded_rows& rows, const tensor& landing);

  nccl_communicator& comm_;
  int ordinal_;
  expert_rank_layout layout_;
  traffic traffic_;
};

}  // namespace troupe
