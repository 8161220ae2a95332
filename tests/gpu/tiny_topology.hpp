#pragma once

// The tiny model of topologies/tiny.toml as the GPU suite trains it with `troupe train`: its one
// stage (layers 0-3) on a device, no expert shards (a GPU stage computes its routed experts), the
// model config by absolute path. The same text with device "cpu" is the run on the host.

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/support/fixtures.hpp"

namespace troupe::testing {

struct tiny_run {
  std::string device = "cuda:0";
  std::string precision = "fp32";
  int steps = 10;
  std::filesystem::path config = source_dir() / "topologies/models/tiny/config.json";
  int checkpoint_every = 0;  ///< train.checkpoint_every; 0: at the end only
  bool control = false;      ///< a control endpoint (troupe ctl, --pause-after)
};

/// The topology file of `run`.
inline std::string tiny_topology(const tiny_run& run) {
  const bool cpu = run.device == "cpu";
  std::ostringstream t;
  t << "[job]\nname = \"tiny-" << (cpu ? "cpu" : "gpu") << "\"\n\n"
    << "[model]\nconfig = \"" << run.config.string() << "\"\nprecision = \"" << run.precision
    << "\"\n\n"
    << "[parallel]\npipeline = 1\ndata = 1\n\n"
    << "[schedule]\nkind = \"1f1b\"\nmicro_batches = 2\n\n"
    << (cpu ? "" : "[[hosts]]\nname = \"localhost\"\naddress = \"127.0.0.1\"\ngpus = 1\n\n")
    << "[[stages]]\nlayers = \"0-3\"\ndevice = \"" << run.device << "\"\n\n"
    << "[balancer]\ngamma = 0.005\n\n[ema]\ndecay = 0.999\nwait = true\n\n"
    << "[train]\nsteps = " << run.steps
    << "\nmicro_batch_size = 4\nsequence_length = 64\nlearning_rate = 1e-3\n"
    << "min_learning_rate = 1e-4\nwarmup_steps = 5\n"
    << (run.checkpoint_every > 0
            ? "checkpoint_every = " + std::to_string(run.checkpoint_every) + "\n"
            : std::string())
    << "\n[data]\ncorpus = \"builtin\"\ntokenizer = \"bytes\"\n"
    << (run.control ? "\n[control]\nlisten = \"127.0.0.1:0\"\n" : "");
  return t.str();
}

/// Writes tiny's config with a rope head of 16 to `directory`/config.json and returns its path:
/// cuBLASLt's block-scaled FP8 needs every reduction dimension a multiple of 16, and tiny's kv_a
/// projection (kv_lora_rank 32 + rope 8 = 40) is not.
inline std::filesystem::path tiny_config_for_fp8(const std::filesystem::path& directory) {
  nlohmann::json config;
  std::ifstream(source_dir() / "topologies/models/tiny/config.json") >> config;
  config["qk_rope_head_dim"] = 16;
  const std::filesystem::path path = directory / "config.json";
  std::ofstream(path) << config.dump(2);
  return path;
}

}  // namespace troupe::testing
