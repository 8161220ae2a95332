#include "runtime/topology/machine_check.hpp"

#include <algorithm>
#include <map>
#include <string>

#include <fmt/format.h>

#include "runtime/device/cuda.hpp"

namespace troupe {

machine_devices machine_devices::here() {
  machine_devices m;
  m.cuda_built = cuda::built_with_cuda();
  m.gpus = cuda::device_count();
  if (m.gpus == 0) m.why_none = cuda::unavailable_reason();
  m.model_on_gpu = m.cuda_built;
  for (const auto& gpu : cuda::visible_gpus()) m.free_bytes.push_back(gpu.free_bytes);
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

double gib(double bytes) {
  return bytes / static_cast<double>(std::size_t{1} << 30);
}

/// The training state of the stages on each GPU of this machine against its free memory; one
/// error per GPU that cannot hold it, at the first such stage's `device` key.
template <class OnThisMachine>
void check_memory(const topology& topo, const machine_devices& machine,
                  const OnThisMachine& on_this_machine, std::vector<diagnostic>& out) {
  struct usage {
    std::int64_t parameters = 0, routed_experts = 0;
    std::vector<std::size_t> stages;
  };
  std::map<int, usage> per_gpu;
  for (std::size_t i = 0; i < topo.stages.size(); ++i)
    for (const placement& p : topo.stages[i].replicas)
      if (p.where.is_cuda() && on_this_machine(p)) {
        usage& u = per_gpu[p.where.index];
        u.parameters += topo.model.stage_parameter_count(topo.stages[i].layers);
        u.routed_experts += topo.model.stage_routed_expert_parameter_count(topo.stages[i].layers);
        u.stages.push_back(i);
      }
  for (const auto& [index, u] : per_gpu) {
    if (index < 0 || static_cast<std::size_t>(index) >= machine.free_bytes.size()) continue;
    const bool rounded_copies = topo.gemm_precision != precision::fp32;
    const double copies = rounded_copies
                              ? static_cast<double>(u.routed_experts) *
                                    static_cast<double>(rounded_expert_bytes_per_parameter)
                              : 0.0;
    const double need = static_cast<double>(u.parameters) *
                            static_cast<double>(training_state_bytes_per_parameter) +
                        copies;
    const double free = static_cast<double>(machine.free_bytes[static_cast<std::size_t>(index)]);
    if (need <= free) continue;
    std::string stages;
    for (std::size_t s : u.stages) stages += (stages.empty() ? "" : ", ") + std::to_string(s);
    out.push_back(
        {topo.where(fmt::format("stages[{}].device", u.stages.front())),
         diagnostic::severity::error,
         fmt::format("the model does not fit on cuda:{}: stage{} {} hold{} {:.2f} G parameters, "
                     "whose FP32 values and gradients and BF16 AdamW moments take {:.1f} GiB "
                     "({} bytes each){}, but cuda:{} has {:.1f} GiB free; place fewer layers on "
                     "it (activations need room on top)",
                     index, u.stages.size() > 1 ? "s" : "", stages, u.stages.size() > 1 ? "" : "s",
                     static_cast<double>(u.parameters) / 1e9, gib(need - copies),
                     training_state_bytes_per_parameter,
                     rounded_copies ? fmt::format(" and the routed experts' BF16 copies {:.1f} GiB",
                                                  gib(copies))
                                    : std::string(),
                     index, gib(free))});
  }
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
  if (for_training && out.empty()) check_memory(topo, machine, on_this_machine, out);
  return out;
}

}  // namespace troupe
