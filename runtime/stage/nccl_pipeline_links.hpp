#pragma once

// A pipeline rank's activations and gradients to and from the ranks of its neighbouring stages
// over NCCL, for any plan of schedule_plan.hpp (1F1B, DualPipe with its two directions). The
// tensors have shapes both sides know (a micro-batch's activations), so only their bytes cross.
//
// NOTES: one communicator per kind (activations, gradients), per copy of the stages (DualPipe's
// direction) and per parity of the sending rank, each on its own stream. At any rank a
// communicator then carries only sends or only receives, one direction between two ranks, in the
// order of the micro-batches: a posted send never holds up a receive queued behind it on the same
// stream (what would tie a rank's progress to its next neighbour's), and a gradient going down
// never waits behind an activation going up, which lets DualPipe's forward and backward chunks of
// the two directions overlap. Sends are posted (nccl_communicator::post_send) and return; receives
// wait, within the communicator's deadline. The ranks connect to their peers on every
// communicator when the links are made: NCCL connects two ranks at their first operation
// together, and DualPipe's first transfers would otherwise each wait for the other's connection.
// Ranks launch on the communicators in their own schedules' orders, which works because NCCL's
// kernels on different streams run at once: nothing may synchronize the whole device while sends
// are posted. tests/schedule/nccl_pipeline_order_test.cpp runs every 1F1B and DualPipe plan of 2
// to 8 ranks against NCCL's ordering and connections on the host: none deadlocks and every
// receive gets the tensor it expects (with both kinds on one communicator, or without connecting
// first, plans deadlock).
//
//   auto comms = join_pipeline_groups(job, plan, pipeline_job_ranks, local_gpu, 30s);
//   nccl_pipeline_links links(plan, rank, raw(comms));
//   links.receive(kind::activations, op.work, x);    // before forward
//   links.send(kind::activations, op.work, y);       // after it (nothing for the last stage)

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/cluster/cluster.hpp"
#include "runtime/schedule/schedule_plan.hpp"
#include "runtime/tensor/tensor.hpp"
#include "runtime/transport/nccl_communicator.hpp"

namespace troupe {

class nccl_pipeline_links {
 public:
  enum class kind { activations, gradients };

  /// Communicators a plan needs: 2 kinds x copies x 2 parities (4 for 1F1B, 8 for DualPipe).
  static std::int32_t communicators(const schedule_plan& plan) { return 4 * plan.copies(); }

  /// `comms[(k * plan.copies() + c) * 2 + p]`: the communicator of kind k (activations 0,
  /// gradients 1), copy c and sender parity p, its ranks the plan's pipeline ranks; `rank` is this
  /// one. Collective: every pipeline rank connects to its peers on each communicator here. `plan`
  /// and the communicators must outlive the links.
  nccl_pipeline_links(const schedule_plan& plan, std::int32_t rank,
                      std::vector<nccl_communicator*> comms);

  /// After `work`'s forward (activations: to the rank of the next stage; nothing from the last)
  /// or its backward (gradients: to the rank of the previous stage; nothing from the first).
  void send(kind what, const stage_work& work, const tensor& values);
  /// Before `work`'s forward (activations from the previous stage's rank) or backward (gradients
  /// from the next stage's rank); `values` has the shape the sender sends.
  void receive(kind what, const stage_work& work, tensor& values);
  /// Waits for every posted send (at the end of a step).
  void flush();

  /// The rank `work`'s `what` comes from when receiving, or goes to when sending; -1: none.
  static std::int32_t peer(const schedule_plan& plan, kind what, const stage_work& work,
                           bool sending);
  /// The index in the communicators of what `sender` sends of `what` for `work`'s copy.
  static std::size_t channel(const schedule_plan& plan, kind what, std::int32_t copy,
                             std::int32_t sender);

 private:
  void connect();

  const schedule_plan& plan_;
  std::int32_t rank_;
  std::vector<nccl_communicator*> comms_;
};

/// Joins the communicators nccl_pipeline_links needs, in its order, through the job's
/// rendezvous (join_nccl_group): `pipeline_job_ranks[r]` is the job rank of pipeline rank r
/// (ascending). Group names start with `prefix`, used once per job.
std::vector<std::unique_ptr<nccl_communicator>> join_pipeline_groups(
    cluster& job, const schedule_plan& plan, const std::vector<int>& pipeline_job_ranks,
    int ordinal, std::chrono::milliseconds deadline, const std::string& prefix = "pipeline");

}  // namespace troupe
