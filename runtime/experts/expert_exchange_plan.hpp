#pragma once

// Where each row goes in an all-to-all of token rows between expert-parallel ranks, and in which
// order it lands (nccl_expert_exchange.hpp moves the rows; this is the host-side bookkeeping).
//
// Every rank of the group holds part of a MoE layer's routed experts (rank_experts[p]: rank p's,
// ascending) and groups its tokens' rows by expert, ascending (counts[e] rows of expert e). In a
// dispatch each rank sends every peer the rows of that peer's experts, peer by peer in rank order
// and, within a peer, in the peer's expert order; the counts go first (one row of counts per peer)
// so that every rank knows how many rows it receives from whom. What arrives is source-major
// (rank q's rows for each of my experts, then rank q + 1's); the experts want it expert-major (my
// expert j's rows from rank 0, rank 1, ...): a reordering. A combine sends the experts' outputs
// back along the same routes, reversed.
//
//   dispatch: token rows --send_source--> send buffer --all-to-all--> receive buffer
//             --receive_source--> expert rows
//   combine:  expert rows --combine_send_source--> buffer --all-to-all--> buffer
//             --combine_receive_source--> token rows
//
// Each *_source list says, for every row of its output, which row of its input it is; an empty
// list is the identity (experts placed in rank order need no reordering on the token side, and
// one rank needs none at all).

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// Who holds which routed experts of a layer across an expert-parallel group.
class expert_rank_layout {
 public:
  /// rank_experts[p]: the experts rank p computes, ascending; together every expert of
  /// [0, experts) exactly once. Throws troupe::error naming the first expert placed twice, never,
  /// out of range or out of order.
  expert_rank_layout(std::vector<std::vector<std::int64_t>> rank_experts, std::int64_t experts);

  std::int32_t ranks() const { return static_cast<std::int32_t>(rank_experts_.size()); }
  std::int64_t experts() const { return experts_; }
  const std::vector<std::int64_t>& experts_of(std::int32_t rank) const;
  /// The rank that computes `expert`.
  std::int32_t rank_of(std::int64_t expert) const {
    return owner_[static_cast<std::size_t>(expert)];
  }
  /// The most experts one rank holds (the width of a counts row).
  std::int64_t widest() const { return widest_; }

  /// The counts row this rank sends `peer`: its rows of each of the peer's experts (in the peer's
  /// expert order), padded with zeros to widest().
  std::vector<std::int64_t> counts_for(std::int32_t peer,
                                       std::span<const std::int64_t> counts) const;

 private:
  std::vector<std::vector<std::int64_t>> rank_experts_;
  std::vector<std::int32_t> owner_;
  std::int64_t experts_ = 0;
  std::int64_t widest_ = 0;
};

/// One exchange's routes, from this rank's counts and the counts rows its peers sent it.
struct expert_exchange_plan {
  std::int32_t rank = 0;
  std::vector<std::int64_t> send_rows;     ///< rows to each rank (dispatch)
  std::vector<std::int64_t> receive_rows;  ///< rows from each rank (dispatch)
  std::vector<std::int64_t> expert_rows;   ///< rows of each of this rank's experts, after dispatch
  std::int64_t token_rows = 0;             ///< rows on the token side (sum of counts)
  std::int64_t received_rows = 0;          ///< rows on the expert side
  std::vector<std::int64_t> send_source;   ///< send buffer row -> token row
  std::vector<std::int64_t> receive_source;          ///< expert row -> receive buffer row
  std::vector<std::int64_t> combine_send_source;     ///< buffer row -> expert row
  std::vector<std::int64_t> combine_receive_source;  ///< token row -> buffer row
  /// The four lists above on the exchange's GPU, i64 (nccl_expert_exchange::plan uploads them
  /// at once; an empty list stays undefined).
  tensor send_index, receive_index, combine_send_index, combine_receive_index;

  /// Rows this rank sends to other ranks (not to itself) in a dispatch.
  std::int64_t rows_to_others() const;
};

/// The plan of rank `rank`: `counts` its rows per expert (every expert of the layout), and
/// `received_counts[q]` the counts row rank q sent it (counts_for(rank, q's counts)). Throws
/// troupe::error for a negative count or a row of the wrong width.
expert_exchange_plan plan_exchange(const expert_rank_layout& layout, std::int32_t rank,
                                   std::span<const std::int64_t> counts,
                                   const std::vector<std::vector<std::int64_t>>& received_counts);

}  // namespace troupe
