// `troupe train` with its stage on cuda:0 against the same run on the CPU (FP32 both): the tiny
// model without expert shards (a GPU stage computes its routed experts), 10 steps from the same
// initialisation and data. Every step's loss, MTP loss and gradient norm agree within 1e-4
// relative (the two paths reorder sums; the difference grows slowly with the steps), the expert
// loads the balancer sees are identical in the first step, and the EMA weights of the final
// checkpoint (on the GPU: snapshots copied asynchronously into pinned memory) agree within 1e-4
// of their largest value.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "tests/gpu/gpu_skip.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;

/// tiny.toml with its stage on `device`, no expert shards, the model config by absolute path.
std::string topology_on(const std::string& device) {
  const fs::path config = troupe::testing::source_dir() / "topologies/models/tiny/config.json";
  std::ostringstream t;
  t << "[job]\nname = \"tiny-" << (device == "cpu" ? "cpu" : "gpu") << "\"\n\n"
    << "[model]\nconfig = \"" << config.string() << "\"\nprecision = \"fp32\"\n\n"
    << "[parallel]\npipeline = 1\ndata = 1\n\n"
    << "[schedule]\nkind = \"1f1b\"\nmicro_batches = 2\n\n"
    << (device == "cpu" ? ""
                        : "[[hosts]]\nname = \"localhost\"\naddress = \"127.0.0.1\"\ngpus = 1\n\n")
    << "[[stages]]\nlayers = \"0-3\"\ndevice = \"" << device << "\"\n\n"
    << "[balancer]\ngamma = 0.005\n\n[ema]\ndecay = 0.999\n\n"
    << "[train]\nsteps = 10\nmicro_batch_size = 4\nsequence_length = 64\nlearning_rate = 1e-3\n"
    << "min_learning_rate = 1e-4\nwarmup_steps = 5\n\n"
    << "[data]\ncorpus = \"builtin\"\ntokenizer = \"bytes\"\n";
  return t.str();
}

std::vector<nlohmann::json> train(const std::string& device, const fs::path& directory) {
  const fs::path topology = directory / (device == "cpu" ? "cpu.toml" : "gpu.toml");
  const fs::path log = directory / (device == "cpu" ? "cpu.jsonl" : "gpu.jsonl");
  const fs::path checkpoints =
      directory / (device == "cpu" ? "cpu-checkpoints" : "gpu-checkpoints");
  std::ofstream(topology) << topology_on(device);
  const char* exe = std::getenv("TROUPE_EXE");
  const auto run = troupe::testing::run_command(std::string(exe) + " train " + topology.string() +
                                                " --quiet --log-json " + log.string() +
                                                " --checkpoint-dir " + checkpoints.string());
  EXPECT_EQ(run.exit_code, 0) << run.output;
  std::vector<nlohmann::json> steps;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) steps.push_back(nlohmann::json::parse(line));
  return steps;
}

TEST(TrainingOnCuda, TinyTrainsWithTheCpusLosses) {
  TROUPE_SKIP_WITHOUT_GPU();
  if (std::getenv("TROUPE_EXE") == nullptr) GTEST_SKIP() << "TROUPE_EXE is not set";
  const fs::path directory = fs::temp_directory_path() / "troupe-training-cuda-test";
  fs::remove_all(directory);
  fs::create_directories(directory);
  const auto cpu = train("cpu", directory);
  const auto gpu = train("cuda:0", directory);
  ASSERT_EQ(cpu.size(), 10u);
  ASSERT_EQ(gpu.size(), cpu.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < cpu.size(); ++i)
    for (const char* key : {"loss", "mtp_loss", "grad_norm"}) {
      const double a = cpu[i][key].get<double>(), b = gpu[i][key].get<double>();
      const double error = std::fabs(a - b) / std::fabs(a);
      worst = std::max(worst, error);
      EXPECT_LT(error, 1e-4) << "step " << i + 1 << " " << key << ": cpu " << a << ", gpu " << b;
    }
  EXPECT_EQ(cpu[0]["expert_load"], gpu[0]["expert_load"]);
  const auto cpu_ema = troupe::hf_checkpoint::open(directory / "cpu-checkpoints/step-000010/ema");
  const auto gpu_ema = troupe::hf_checkpoint::open(directory / "gpu-checkpoints/step-000010/ema");
  double ema_worst = 0.0;
  for (const auto& name : cpu_ema.names()) {
    const troupe::tensor a = cpu_ema.read_f32(name), b = gpu_ema.read_f32(name);
    const double e = troupe::testing::max_relative_error(b.data_as<float>(), a.data_as<float>(),
                                                         static_cast<std::size_t>(a.numel()));
    EXPECT_LT(e, 1e-4) << name;
    ema_worst = std::max(ema_worst, e);
  }
  std::printf("[ train gpu vs cpu ] EMA weights of %zu tensors: worst relative difference %.3g\n",
              cpu_ema.names().size(), ema_worst);
  std::printf(
      "[ train gpu vs cpu ] 10 steps: loss %.6f -> %.6f (cpu %.6f -> %.6f), worst relative "
      "difference %.3g; step time %.3f s (cpu %.3f s)\n",
      gpu.front()["loss"].get<double>(), gpu.back()["loss"].get<double>(),
      cpu.front()["loss"].get<double>(), cpu.back()["loss"].get<double>(), worst,
      gpu.back()["step_seconds"].get<double>(), cpu.back()["step_seconds"].get<double>());
  fs::remove_all(directory);
}

}  // namespace
