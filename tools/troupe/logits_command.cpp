#include <cmath>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/token_ids.hpp"

namespace troupe::cli {

namespace {

struct logits_options {
  std::string model;
  std::string tokens;
  std::string out;
  std::string device = "cpu";
  int threads = 0;
};

int logits(const logits_options& options) {
  const auto checkpoint = hf_checkpoint::open(options.model);
  const auto& config = checkpoint.config();
  const std::vector<std::int32_t> ids =
      parse_token_ids(options.tokens, config.vocab_size, "--tokens");
  const device where = parse_device(options.device);
  if (where.is_cuda()) cuda::require_device(where.index);  // before the model is read

  plugin_registry registry;
  model_options model;
  model.mtp = false;  // the main model's logits
  model.where = where;
  model_runner runner(config, {}, load_model_plugins(registry, config), model);
  thread_pool pool(options.threads > 0
                       ? options.threads
                       : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  load_parameters(checkpoint, runner.parameters(), &pool);
  exec_context context(where, pool);
  model_batch batch;
  const auto length = static_cast<std::int64_t>(ids.size());
  batch.tokens = tensor::empty(dtype::i32, {1, length});
  std::copy(ids.begin(), ids.end(), batch.tokens.data_as<std::int32_t>());
  const model_output output = runner.forward(context, 0, batch, true);
  runner.forget(0);
  const std::int64_t vocab = config.vocab_size;
  const tensor logits = output.logits.to(device::cpu());
  const float* values = logits.data_as<float>();
  if (!options.out.empty()) {
    std::ofstream out(options.out, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(values), static_cast<std::streamsize>(logits.nbytes()));
    if (!out) fail("{}: cannot write the logits", options.out);
    fmt::print("wrote {} x {} float32 logits (row-major, little-endian) to {}\n", length, vocab,
               options.out);
    return exit_ok;
  }
  fmt::print("{} positions x {} logits ({} layers, hidden {})\n", length, vocab,
             config.num_hidden_layers, config.hidden_size);
  for (std::int64_t t = 0; t < length; ++t) {
    const float* row = values + t * vocab;
    std::int64_t best = 0;
    double sum = 0.0, squares = 0.0;
    for (std::int64_t v = 0; v < vocab; ++v) {
      if (row[v] > row[best]) best = v;
      sum += static_cast<double>(row[v]);
      squares += static_cast<double>(row[v]) * static_cast<double>(row[v]);
    }
    const double mean = sum / static_cast<double>(vocab);
    fmt::print("  position {}: token {} -> argmax {} ({:.4f}); mean {:.4f}, std {:.4f}\n", t,
               ids[static_cast<std::size_t>(t)], best, row[best], mean,
               std::sqrt(std::max(0.0, squares / static_cast<double>(vocab) - mean * mean)));
  }
  return exit_ok;
}

}  // namespace

void add_logits_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<logits_options>();
  auto* command = app.add_subcommand("logits",
                                     "Run a Hugging Face DeepSeek-V3 model directory on a token "
                                     "sequence and write the float32 logits of "
                                     "every position ([T, vocab_size], row-major, little-endian)");
  command->add_option("--model", options->model, "Model directory (config.json and *.safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  command->add_option("--tokens", options->tokens, "Comma-separated token ids, e.g. 5,17,42")
      ->required();
  command->add_option("--out", options->out, "Write the logits here (otherwise print a summary)");
  command->add_option("--device", options->device,
                      "Where to compute: cpu (default) or cuda:N (FP32 on the GPU)");
  command->add_option("--threads", options->threads, "Worker threads (default: one per core)")
      ->check(within(thread_bounds));
  command->callback([options, &exit_code] { exit_code = logits(*options); });
}

}  // namespace troupe::cli
