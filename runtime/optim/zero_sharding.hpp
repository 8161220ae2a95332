#pragma once

// ZeRO-1: the optimizer state of a replicated parameter split among its holders. A parameter held
// H times (by H data-parallel replicas, or by DualPipe's two copies of a stage, or by the first
// and the last stage for the shared embedding) is cut into H contiguous element ranges; holder k
// keeps the AdamW moments of range k only. One step:
//
//   reduce-scatter  each holder sends every other holder the pieces of its gradient that the
//                   other keeps; each sums the pieces of its own ranges in holder order (the
//                   order the coordinator sums in without ZeRO, so the sums are the same floats);
//   optimizer       each holder updates its ranges (adamw restricted to them);
//   all-gather      each holder sends its updated ranges to the others, which copy them in.
//
// The exchanges go in buckets of at most `bucket_elements` elements of the kept ranges (the same
// cut in every rank: ranges in parameter-name order, split where a bucket fills): a rank sends
// bucket b + 1 only after it has every peer's bucket b, so what waits in its memory is at most two
// buckets from each peer, not all the pieces at once (those would take as much memory as the
// moments ZeRO-1 saves: f32 gradient pieces against two bf16 moments).
//
// This class is the bookkeeping of one pipeline rank: what to send whom and what to do with what
// arrives; the stage actor carries the pieces (stage_actor.cpp). A "slot" is one chunk of one
// rank that holds the parameter (a rank holds the embedding twice under DualPipe when its two
// stages are the first and the last); slots are ordered by rank, then chunk.

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "runtime/optim/gradient_norm.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// Elements [begin, end) of a flattened tensor.
struct element_range {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const { return end - begin; }
  bool operator==(const element_range&) const = default;
};

/// Slice `k` of `holders` of a tensor of `numel` elements: the even split, the first
/// numel % holders slices one longer.
element_range zero_slice(std::int64_t numel, std::int32_t k, std::int32_t holders);

/// One chunk of one pipeline rank that holds a parameter.
struct zero_slot {
  std::int32_t rank = 0;   ///< the rank's index in the job (replica x pipeline + rank)
  std::int32_t chunk = 0;  ///< the chunk's index in that rank
  bool operator==(const zero_slot&) const = default;
};

/// Every replicated parameter of the job with its element count and its slots, in order.
struct zero_layout {
  struct entry {
    std::int64_t numel = 0;
    std::vector<zero_slot> slots;
  };
  std::map<std::string, entry> parameters;
};

/// Tensors by name, as the pieces travel.
using zero_pieces = std::vector<std::pair<std::string, tensor>>;

/// The gradient or value tensor of parameter `name` in chunk `chunk` of this rank.
using chunk_tensor = std::function<tensor(std::int32_t chunk, const std::string& name)>;

class zero_sharding {
 public:
  /// Elements of a bucket by default: 64 MiB of f32 pieces.
  static constexpr std::int64_t default_bucket_elements = std::int64_t{16} << 20;

  /// The part of `layout` rank `rank` takes part in.
  zero_sharding(const zero_layout& layout, std::int32_t rank,
                std::int64_t bucket_elements = default_bucket_elements);

  std::int32_t rank() const { return rank_; }
  /// The ranks this rank exchanges pieces with, ascending.
  const std::vector<std::int32_t>& peers() const { return peers_; }
  /// Buckets of every exchange (the same in every rank).
  std::size_t buckets() const { return buckets_.size(); }
  /// Chunk `chunk`'s ranges, by parameter name (what its adamw keeps).
  std::map<std::string, element_range> ranges_of(std::int32_t chunk) const;

  /// Reduce-scatter, out: copies of the pieces of this rank's gradients (`grad`) in bucket
  /// `bucket` that `peer` keeps.
  zero_pieces gradient_pieces(std::int32_t peer, const chunk_tensor& grad,
                              std::size_t bucket) const;
  /// Reduce-scatter, in: sums, for every range of bucket `bucket` this rank keeps, the pieces of
  /// every slot in slot order (its own from `grad`, the others from `received`, by sending rank),
  /// writes each sum into the keeping chunk's gradient, and adds the sums' squares to `summary`
  /// (float64). Throws troupe::error naming a missing or misshapen piece.
  void reduce(const std::map<std::int32_t, zero_pieces>& received, const chunk_tensor& grad,
              std::size_t bucket, gradient_summary& summary) const;
  /// All-gather, out: copies of this rank's updated ranges (`value`) in bucket `bucket` that
  /// `peer` holds too.
  zero_pieces value_pieces(std::int32_t peer, const chunk_tensor& value, std::size_t bucket) const;
  /// All-gather, in: copies every range of bucket `bucket` other slots keep into each of this
  /// rank's chunks that holds it (from `received`, or from this rank's keeping chunk).
  void gather(const std::map<std::int32_t, zero_pieces>& received, const chunk_tensor& value,
              std::size_t bucket) const;

 private:
  struct share {
    std::string name;
    std::int64_t numel = 0;
    std::vector<zero_slot> slots;
    bool held = false;  ///< this rank holds it
  };
  /// Elements `range` of slot `keeper`'s slice of parameter `share`: what a bucket is made of.
  struct unit {
    std::size_t share = 0;
    std::size_t keeper = 0;
    element_range range;
  };
  element_range slice(const share& s, std::size_t k) const;
  bool holds(const share& s, std::int32_t rank) const;

  std::int32_t rank_;
  std::vector<share> shares_;               ///< every replicated parameter of the job
  std::vector<std::vector<unit>> buckets_;  ///< units, bucket by bucket
  std::vector<std::int32_t> peers_;
};

}  // namespace troupe
