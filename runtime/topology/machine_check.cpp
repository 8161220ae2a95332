#include "runtime/topology/machine_check.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "runtime/device/cuda.hpp"

namespace troupe {

machine_devices machine_devices::here() {
  machine_devices m;
  m.cuda_built = cuda::built_with_cuda();
  m.gpus = cuda::device_count();
  if (m.gpus == 0) m.why_none = cuda::unavailable_reason();
  m.model_on_gpu = m.cuda_built;
  return m;
}

namespace {

std::string what_there_is(const machine_devices& m) {
  if (!m.cuda_built) return "this troupe was built without CUDA (rebuild with -Dcuda=enabled)";
  if (m.gpus == 0) return fmt::format("this machine has no usable GPU ({})", m.why_none);
  return m.gpus == 1
             ? std::string("this machine has 1 GPU (cuda:0)")
             : fmt::format("this machine has {} GPUs (cuda:0 to cuda:{})", m.gpus, m.gpus - 1);
}

}  // namespace

std::vector<diagnostic> check_devices(const topology& topo, const machine_devices& machine,
                                      const std::vector<std::string>& hosts, bool for_training) {
  std::vector<diagnostic> out;
  const auto on_this_machine = [&](const placement& p) {
    return hosts.empty() || std::find(hosts.begin(), hosts.end(), p.host) != hosts.end();
  };
  const auto check = [&](const placement& p, const std::string& path, const std::string& what,
                         bool shard) {
    if (!p.where.is_cuda() || !on_this_machine(p)) return;
    std::string problem;
    if (!machine.cuda_built || p.where.index >= machine.gpus)
      problem = fmt::format("{} is placed on {}, but {}", what, to_string(p.where),
                            what_there_is(machine));
    else if (for_training && !machine.model_on_gpu)
      problem = fmt::format(
          "{} is placed on {}, but this troupe's model runs on the CPU only; place it on \"cpu\" "
          "rather than have it run there silently",
          what, to_string(p.where));
    else if (for_training && shard)
      problem = fmt::format(
          "{} is placed on {}, but expert shards run on the CPU until expert parallelism runs "
          "over NCCL; drop [[expert_shards]] so the stages on GPUs compute their routed experts",
          what, to_string(p.where));
    else if (for_training && !topo.expert_shards.empty())
      problem = fmt::format(
          "{} is placed on {} next to expert shards: on a GPU a stage computes its routed experts "
          "itself until expert parallelism runs over NCCL; drop [[expert_shards]] (or place the "
          "stages on \"cpu\")",
          what, to_string(p.where));
    if (!problem.empty())
      out.push_back({topo.where(path), diagnostic::severity::error, std::move(problem)});
  };
  for (std::size_t i = 0; i < topo.stages.size(); ++i)
    for (std::size_t r = 0; r < topo.stages[i].replicas.size(); ++r)
      check(topo.stages[i].replicas[r], fmt::format("stages[{}].device", i),
            fmt::format("stage {}{}", i, topo.data > 1 ? fmt::format(" replica {}", r) : ""),
            false);
  for (std::size_t i = 0; i < topo.expert_shards.size(); ++i)
    check(topo.expert_shards[i].place, fmt::format("expert_shards[{}].device", i),
          fmt::format("expert shard {}", i), true);
  return out;
}

}  // namespace troupe
