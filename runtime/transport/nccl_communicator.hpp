#pragma once

// NCCL between processes with one GPU each, behind troupe's own type: one communicator per
// process group the topology needs (expert parallel, pipeline neighbours, data parallel). Every
// operation goes to the communicator's own stream, launched under a lock per GPU (two
// communicators launching at once on one GPU can deadlock each other), and is waited for with a
// deadline: a rank that died or hangs turns into a troupe::error naming the operation, the
// communicator and the cause, and the communicator is aborted (ncclCommAbort) so that no thread
// stays inside NCCL. Asynchronous errors (a peer's connection lost) are polled while waiting.
//
// NCCL is loaded with dlopen when a communicator is first made (libnccl.so.2 from the library
// path: the toolkit's, or PyTorch's nvidia-nccl wheel): troupe starts without it and says so only
// when NCCL is needed. NVLink multicast (NVLS) is turned off (NCCL_NVLS_ENABLE=0) before NCCL
// first reads its environment.
//
//   const auto id = nccl_communicator::make_id();            // rank 0; sent to every rank
//   nccl_communicator comm(id, ranks, rank, 0, std::chrono::seconds(10));
//   comm.all_reduce_sum(gradients);                          // on cuda:0, waited for

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/tensor/tensor.hpp"

namespace troupe {

class nccl_communicator {
 public:
  /// Whether NCCL can be loaded here (a build with CUDA and libnccl.so.2 on the library path);
  /// `why` says what is missing otherwise.
  static bool available(std::string* why = nullptr);
  /// A new unique id (its 128 bytes): rank 0 makes it and every rank of the group gets it.
  static std::vector<std::uint8_t> make_id();

  /// Joins the group `id` as rank `rank` of `ranks` on cuda:`ordinal`; throws troupe::error when
  /// the group is not complete within `deadline` (a rank missing) or NCCL fails.
  nccl_communicator(std::span<const std::uint8_t> id, int ranks, int rank, int ordinal,
                    std::chrono::milliseconds deadline);
  ~nccl_communicator();
  nccl_communicator(const nccl_communicator&) = delete;
  nccl_communicator& operator=(const nccl_communicator&) = delete;

  int ranks() const;
  int rank() const;
  /// The GPU: cuda:ordinal().
  int ordinal() const;
  /// Whether an operation failed and the communicator was aborted: every later one throws.
  bool aborted() const;

  /// `values` = their sum over the ranks (f32, bf16, i64).
  void all_reduce_sum(tensor& values);
  /// `out` ([n]) = the sum over the ranks of this rank's n-element part of `in` ([ranks * n]).
  void reduce_scatter_sum(const tensor& in, tensor& out);
  /// `out` ([ranks * n]) = every rank's `in` ([n]), in rank order.
  void all_gather(const tensor& in, tensor& out);
  /// All-to-all of rows ([*, row] tensors of any dtype): this rank sends `send_rows[p]`
  /// consecutive rows of `in` to rank p and receives `receive_rows[p]` rows from it into `out`,
  /// in rank order (the counts are exchanged first, by the caller).
  void all_to_all(const tensor& in, std::span<const std::int64_t> send_rows, tensor& out,
                  std::span<const std::int64_t> receive_rows);
  /// Several all-to-alls of rows with the same counts in one NCCL group, waited for once (FP8
  /// codes and their scales travel together): the rows of `in[i]` go into `out[i]`.
  void all_to_all(std::span<const tensor> in, std::span<const std::int64_t> send_rows,
                  std::span<tensor> out, std::span<const std::int64_t> receive_rows);
  /// Point to point (pipeline neighbours): `values` to rank `peer`, or from it.
  void send(const tensor& values, int peer);
  void receive(tensor& values, int peer);
  /// A send that does not wait for its receiver: enqueued on the communicator's stream (after the
  /// caller's work on `values`), `values` kept until it is done; the caller must not write into
  /// it before then. Later operations of this communicator queue behind it; wait_sends() waits for
  /// every posted send (all within one deadline from then: a dead receiver shows there), a failure
  /// aborts the communicator as above, and the destructor waits for them too.
  ///
  /// NOTES: the first operation between two ranks on a communicator connects them, and that
  /// waits until the peer's first operation with this rank on it: connect ahead (an all_to_all of
  /// one row with each peer) where ranks would otherwise each wait on another communicator. And
  /// nothing may synchronize the whole device while sends are posted (cudaDeviceSynchronize would
  /// wait for a send whose receiver waits for this rank).
  void post_send(const tensor& values, int peer);
  void wait_sends();
  /// Posted sends not yet done.
  std::size_t sends_pending();

 private:
  struct state;
  std::unique_ptr<state> s_;
};

}  // namespace troupe
