#pragma once

// ZeRO-1 between GPUs over NCCL: the data-parallel replicas of a set of parameters (one process
// per GPU, the same parameters in the same order in each) share the optimizer state. Every
// parameter is cut into DP slices as the host exchange cuts it (zero_sharding.hpp's zero_slice);
// replica k keeps the AdamW moments of slice k only (adamw::keep_ranges) and updates it. A step:
//
//   reduce_gradients()  the gradients reduce-scattered: each replica's slices get the sum over the
//                       replicas (NCCL's ncclReduceScatter over buckets that pack every
//                       parameter's slice k into replica k's part); returns the global squared
//                       norm of the summed gradient (each replica's float64 part, added in
//                       replica order), for clipping;
//   adamw::step         on the replica's slices (its own stream, as today);
//   gather_values()     the updated slices all-gathered into every replica's parameters.
//
// The moments a replica keeps are 1/DP of adamw's; checkpoints hold them as pieces
// "<name>.exp_avg[BEGIN:END]", which adamw::load_state reads back at any DP size. A bucket holds
// at most `bucket_elements` elements of each replica's part, and up to 3 of padding a piece (a
// large parameter's slice is cut across buckets), so the packing buffers stay small next to the
// gradients. Build it and call everything under the optimizer's stream (context_stream_scope): the
// buffers, the packing and the collectives follow the calling thread's current stream. The
// parameters' memory must stay where it is (the packing tables point into it). Collective: every
// replica calls each function in the same order.
//
//   nccl_zero_one zero(comm, 0, store, optimizer);
//   const double norm2 = zero.reduce_gradients();
//   optimizer.step(lr, clip_scale(norm2), step, context);
//   zero.gather_values();

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/model/parameter_store.hpp"
#include "runtime/optim/adamw.hpp"
#include "runtime/optim/zero_sharding.hpp"
#include "runtime/tensor/tensor.hpp"
#include "runtime/transport/nccl_communicator.hpp"

namespace troupe {

class nccl_zero_one {
 public:
  /// Elements of a replica's part of a bucket by default: 64 MiB of f32.
  static constexpr std::int64_t default_bucket_elements = std::int64_t{16} << 20;

  /// The replicas are `comm`'s ranks on cuda:`ordinal`; `store` holds this replica's parameters
  /// (on that GPU) and `optimizer` is attached to it: from now on it keeps this replica's slices
  /// only (its moments start at zero; load a checkpoint's after this).
  nccl_zero_one(nccl_communicator& comm, int ordinal, parameter_store& store, adamw& optimizer,
                std::int64_t bucket_elements = default_bucket_elements);
  /// Waits for the GPU: the buffers go back to the pool only when no kernel reads them.
  ~nccl_zero_one();
  nccl_zero_one(const nccl_zero_one&) = delete;
  nccl_zero_one& operator=(const nccl_zero_one&) = delete;

  /// This replica's slice of each parameter.
  const std::map<std::string, element_range>& ranges() const { return ranges_; }
  std::size_t buckets() const { return buckets_.size(); }

  /// Collective: reduce-scatters the gradients; returns the squared norm of their sum.
  double reduce_gradients();
  /// Collective: all-gathers the updated values.
  void gather_values();

 private:
  /// Elements [offset, offset + length) of every replica's slice of `param` (shorter slices:
  /// what they have of it): a bucket's share of a parameter.
  struct piece {
    parameter* param = nullptr;
    std::int64_t offset = 0;
    std::int64_t length = 0;
  };
  /// The four copy_span tables of a bucket (on the device, as bytes) and their lengths.
  enum table { pack_gradients, unpack_sums, pack_values, unpack_values };
  struct bucket {
    std::vector<piece> pieces;
    std::int64_t filled = 0;                    ///< elements of slice 0 (the longest) it holds
    std::int64_t width = 0;                     ///< a replica's part, padded (a multiple of 4)
    std::vector<std::vector<std::int64_t>> at;  ///< at[piece][k]: its place in replica k's part
    tensor tables[4];
    std::int64_t spans[4] = {0, 0, 0, 0};
  };
  void lay_out(bucket& b) const;
  void build_tables(bucket& b);
  void copy(const bucket& b, table which, void* stream);

  nccl_communicator& comm_;
  int ordinal_;
  std::map<std::string, element_range> ranges_;
  std::vector<bucket> buckets_;
  tensor exchange_;      ///< f32 [DP x widest]: the packed gradients, then the gathered values
  tensor part_;          ///< f32 [widest]: this replica's summed part, then its values
  tensor norm_tensors_;  ///< u8: kernels/cuda gradient_tensor table of this replica's slices
  std::int64_t norm_count_ = 0;
  std::vector<const float*> values_;  ///< every parameter it updates (their BF16 copies go stale)
};

}  // namespace troupe
