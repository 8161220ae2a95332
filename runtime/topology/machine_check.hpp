#pragma once

// Placements against the machine that is to run them. A topology is valid on paper when its
// devices exist on its hosts (validate.cpp); this checks, before any work starts, that the
// machine at hand has them: a build without CUDA, a machine without that GPU, or a cuda:N beyond
// the GPUs present is an error at the `device` key's file:line:column, never a silent CPU run.

#include <cstddef>
#include <string>
#include <vector>

#include "runtime/topology/diagnostic.hpp"
#include "runtime/topology/topology.hpp"

namespace troupe {

/// What a machine offers for placements.
struct machine_devices {
  bool cuda_built = false;  ///< this build has the CUDA path
  int gpus = 0;             ///< visible GPUs
  std::string why_none;     ///< why there are none ("built without CUDA", the driver's error)
  /// Whether the model itself (its layers, optimizer and activations) runs on GPUs in this
  /// build (it does with CUDA); where it does not, a GPU placement for training is refused
  /// rather than run on the CPU.
  bool model_on_gpu = false;
  /// Free memory of each GPU (cuda:0 first) when known: training checks that the parameters,
  /// gradients and AdamW moments of the stages placed on a GPU fit there before building them.
  std::vector<std::size_t> free_bytes;

  /// This machine, as the CUDA runtime sees it.
  static machine_devices here();
};

/// One error per placement on `hosts` (every host when empty) that `machine` cannot honour,
/// each at the position of its `device` key. `for_training` also refuses GPU placements the
/// model cannot run on (machine.model_on_gpu false), expert shards with GPUs (a stage on a GPU
/// computes its routed experts itself until expert parallelism runs over NCCL), and a GPU whose
/// free memory cannot hold the training state of the stages placed on it
/// (training_state_bytes_per_parameter each, rounded_expert_bytes_per_parameter more per routed
/// expert weight under bf16 and fp8; activations need room on top).
std::vector<diagnostic> check_devices(const topology& topo, const machine_devices& machine,
                                      const std::vector<std::string>& hosts = {},
                                      bool for_training = false);

/// What training keeps on the device per parameter: the FP32 value and gradient and the two BF16
/// AdamW moments.
inline constexpr std::size_t training_state_bytes_per_parameter = 4 + 4 + 2 + 2;

/// What the bf16 and fp8 precisions keep on top per routed expert weight on a GPU: the moe
/// plugin's BF16 copy, made once per optimizer step (every grouped pass reads it).
inline constexpr std::size_t rounded_expert_bytes_per_parameter = 2;

}  // namespace troupe
