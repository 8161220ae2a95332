#include "runtime/stage/nccl_pipeline_links.hpp"

#include <fmt/format.h>

#include "runtime/cluster/nccl_group.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

nccl_pipeline_links::nccl_pipeline_links(const schedule_plan& plan, std::int32_t rank,
                                         std::vector<nccl_communicator*> comms)
    : plan_(plan), rank_(rank), comms_(std::move(comms)) {
  if (static_cast<std::int32_t>(comms_.size()) != communicators(plan))
    fail("pipeline over NCCL: {} communicators for {} copies of the stages (four a copy)",
         comms_.size(), plan.copies());
  for (const nccl_communicator* c : comms_)
    if (c == nullptr || c->ranks() != plan.ranks() || c->rank() != rank)
      fail(
          "pipeline over NCCL: every communicator must hold the {} pipeline ranks, this one as "
          "rank {}",
          plan.ranks(), rank);
  connect();
}

void nccl_pipeline_links::connect() {
  // NOTES: NCCL connects two ranks on a communicator at their first operation together, and the
  // first rank to get there waits for the other. In DualPipe rank 0's first transfer is on one
  // communicator and rank 1's on another: each would wait for the other's connection for ever
  // (tests/schedule/nccl_pipeline_order_test.cpp). So every rank connects to its peers here, one
  // communicator after the other in the same order everywhere, with one byte each way.
  const std::int32_t ranks = plan_.ranks();
  for (std::size_t c = 0; c < comms_.size(); ++c) {
    std::vector<std::int64_t> send(static_cast<std::size_t>(ranks), 0), receive(send);
    for (const auto& [stage, copy] : plan_.chunks(rank_))
      for (const kind what : {kind::activations, kind::gradients}) {
        const stage_work work{stage, copy, 0};
        const std::int32_t to = peer(plan_, what, work, true);
        if (to >= 0 && channel(plan_, what, copy, rank_) == c)
          send[static_cast<std::size_t>(to)] = 1;
        const std::int32_t from = peer(plan_, what, work, false);
        if (from >= 0 && channel(plan_, what, copy, from) == c)
          receive[static_cast<std::size_t>(from)] = 1;
      }
    std::int64_t sends = 0, receives = 0;
    for (std::int32_t p = 0; p < ranks; ++p) {
      sends += send[static_cast<std::size_t>(p)];
      receives += receive[static_cast<std::size_t>(p)];
    }
    const device gpu = device::cuda(comms_[c]->ordinal());
    const tensor out = tensor::zeros(dtype::u8, {sends, 1}, gpu);
    tensor in = tensor::zeros(dtype::u8, {receives, 1}, gpu);
    comms_[c]->all_to_all(out, send, in, receive);
  }
}

std::int32_t nccl_pipeline_links::peer(const schedule_plan& plan, kind what, const stage_work& work,
                                       bool sending) {
  // Activations go up the stages, gradients down.
  const bool up = (what == kind::activations) == sending;
  const std::int32_t stage = work.stage + (up ? 1 : -1);
  if (stage < 0 || stage >= plan.stages()) return -1;
  return plan.rank_of_copy(stage, work.copy);
}

std::size_t nccl_pipeline_links::channel(const schedule_plan& plan, kind what, std::int32_t copy,
                                         std::int32_t sender) {
  const std::int32_t k = what == kind::activations ? 0 : 1;
  return static_cast<std::size_t>((k * plan.copies() + copy) * 2 + sender % 2);
}

void nccl_pipeline_links::send(kind what, const stage_work& work, const tensor& values) {
  const std::int32_t to = peer(plan_, what, work, true);
  if (to < 0) return;
  comms_[channel(plan_, what, work.copy, rank_)]->post_send(values, to);
}

void nccl_pipeline_links::receive(kind what, const stage_work& work, tensor& values) {
  const std::int32_t from = peer(plan_, what, work, false);
  if (from < 0)
    fail("pipeline over NCCL: stage {} receives no {} (it is the {} stage)", work.stage,
         what == kind::activations ? "activations" : "gradients",
         what == kind::activations ? "first" : "last");
  comms_[channel(plan_, what, work.copy, from)]->receive(values, from);
}

void nccl_pipeline_links::flush() {
  for (nccl_communicator* c : comms_) c->wait_sends();
}

std::vector<std::unique_ptr<nccl_communicator>> join_pipeline_groups(
    cluster& job, const schedule_plan& plan, const std::vector<int>& pipeline_job_ranks,
    int ordinal, std::chrono::milliseconds deadline, const std::string& prefix) {
  if (static_cast<std::int32_t>(pipeline_job_ranks.size()) != plan.ranks())
    fail("pipeline over NCCL: {} job ranks for {} pipeline ranks", pipeline_job_ranks.size(),
         plan.ranks());
  std::vector<std::unique_ptr<nccl_communicator>> out;
  for (const char* what : {"activations", "gradients"})
    for (std::int32_t copy = 0; copy < plan.copies(); ++copy)
      for (const char* sender : {"even", "odd"})
        out.push_back(join_nccl_group(job, fmt::format("{}-{}-{}-{}", prefix, what, copy, sender),
                                      pipeline_job_ranks, ordinal, deadline));
  return out;
}

}  // namespace troupe
