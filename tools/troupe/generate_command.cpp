// `troupe generate`: text from a Hugging Face DeepSeek-V3 directory or a troupe checkpoint,
// greedy or sampled (temperature, top-k, top-p, seed), streamed to stdout as it is produced and
// stopped at EOS or after --max-new-tokens; --json prints one object for scripts instead.
//
// The prompt goes through the model in one forward that fills MLA's paged latent cache; each
// later token is one forward of one token (or, with --speculative mtp, a token and the MTP
// module's draft) over the cache (runtime/inference/generation.hpp).
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/data/bpe_tokenizer.hpp"
#include "runtime/data/byte_tokenizer.hpp"
#include "runtime/data/chat_prompt.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/inference/cached_model.hpp"
#include "runtime/inference/generation.hpp"
#include "runtime/inference/latent_cache.hpp"
#include "runtime/inference/sampler.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/topology/load.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/model_input.hpp"
#include "tools/troupe/token_ids.hpp"

namespace troupe::cli {

namespace {

namespace fs = std::filesystem;

struct generate_options {
  std::string model, prompt, tokens, tokenizer;
  int max_new_tokens = 64;
  sampling_params sampling;
  std::string device = "cpu";
  std::string speculative, cache_dtype, topology;
  int threads = 0;
  bool chat = false, json = false;
};

/// The prompt's ids: --tokens as given, or --prompt encoded (in the chat format with --chat,
/// after the BOS token where the tokenizer asks for one).
std::vector<std::int32_t> prompt_ids(const generate_options& o,
                                     const std::optional<text_codec>& tokenizer,
                                     std::int64_t vocab_size) {
  if (o.tokens.empty() == o.prompt.empty()) fail("give one of --prompt and --tokens");
  if (!o.tokens.empty()) return parse_token_ids(o.tokens, vocab_size, "--tokens");
  if (!tokenizer)
    fail(
        "--prompt needs a tokenizer: {} has no tokenizer.json; give --tokenizer PATH (or "
        "bytes) or --tokens IDS",
        o.model);
  std::vector<std::int32_t> ids;
  if (o.chat) {
    if (!tokenizer->chat_tokens || !tokenizer->bos || !tokenizer->eos)
      fail(
          "--chat needs a Hugging Face tokenizer whose tokenizer_config.json names bos_token and "
          "eos_token");
    tokenizer->encode(
        deepseek_chat_prompt({{"user", o.prompt}}, tokenizer->decode(std::vector{*tokenizer->bos}),
                             tokenizer->decode(std::vector{*tokenizer->eos})),
        ids);
  } else {
    if (tokenizer->add_bos && tokenizer->bos) ids.push_back(*tokenizer->bos);
    tokenizer->encode(o.prompt, ids);
  }
  for (std::int32_t id : ids)
    if (id >= vocab_size)
      fail("the tokenizer gives token {}, outside the model's vocabulary of {}", id, vocab_size);
  if (ids.empty()) fail("--prompt: the prompt encodes to no token");
  return ids;
}

int generate(const generate_options& o) {
  check_sampling(o.sampling);  // before anything is read
  const auto checkpoint = hf_checkpoint::open(o.model);
  const auto& config = checkpoint.config();
  const std::optional<text_codec> tokenizer = open_text_codec(o.model, o.tokenizer, config);
  std::vector<std::int32_t> ids = prompt_ids(o, tokenizer, config.vocab_size);
  const std::int32_t eos = tokenizer && tokenizer->eos
                               ? *tokenizer->eos
                               : static_cast<std::int32_t>(config.eos_token_id);
  if (o.speculative == "mtp")
    require_mtp(checkpoint, o.model, "--speculative mtp");  // not read yet
  std::optional<inference_spec> inference;
  if (!o.topology.empty()) {
    topology_load_options load;
    load.resolve_plugins = false;
    inference = load_topology(o.topology, load).topo.inference;
  }
  const device where = parse_device(o.device);
  if (where.is_cuda()) cuda::require_device(where.index);  // before the model is read

  // The cache: the topology's [inference] budget, or room for this one sequence (the prompt,
  // the tokens to generate and a draft); checked before the model is read.
  const std::string cache_type =
      !o.cache_dtype.empty() ? o.cache_dtype : (inference ? inference->kv_cache_dtype : "f32");
  const latent_cache_shape shape = inference_cache_shape(
      config, o.speculative == "mtp" ? config.num_nextn_predict_layers : 0,
      cache_type == "bf16" ? dtype::bf16 : dtype::f32, inference ? inference->block_tokens : 64);
  const auto needed = static_cast<std::int64_t>(ids.size()) + o.max_new_tokens + 1;
  const std::uint64_t budget = inference ? static_cast<std::uint64_t>(inference->kv_cache_mib) << 20
                                         : static_cast<std::uint64_t>(needed + shape.block_tokens) *
                                               static_cast<std::uint64_t>(shape.bytes_per_token());
  const auto holds =
      static_cast<std::int64_t>(budget / static_cast<std::uint64_t>(shape.bytes_per_block()) *
                                static_cast<std::uint64_t>(shape.block_tokens));
  if (holds < needed)
    fail(
        "the KV cache of {} MiB ({} [inference] kv_cache_mib) holds {} tokens (blocks of {}, {} "
        "bytes per token in {}); this request needs {} (a prompt of {}, {} new tokens and a "
        "draft)",
        budget >> 20, o.topology, holds, shape.block_tokens, shape.bytes_per_token(), cache_type,
        needed, ids.size(), o.max_new_tokens);
  plugin_registry registry;
  model_options model;
  model.mtp = o.speculative == "mtp";
  model.where = where;
  model_runner runner(config, {}, load_model_plugins(registry, config), model);
  thread_pool pool(o.threads > 0
                       ? o.threads
                       : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  load_parameters(checkpoint, runner.parameters(), &pool);
  exec_context context(where, pool);
  cached_model cached(runner);

  generation_request request;
  request.prompt = ids;
  request.max_new_tokens = o.max_new_tokens;
  request.sampling = o.sampling;
  request.eos = eos;
  if (tokenizer) request.drawable_vocab = tokenizer->vocab_size;
  request.speculative_mtp = model.mtp;
  latent_cache cache(shape, budget, where);
  const auto stream = [&](std::int32_t token) {
    if (o.json || token == eos) return;
    const std::string piece =
        tokenizer ? tokenizer->decode(std::vector{token}) : fmt::format("{} ", token);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  };
  const generation_result result = generate_sequence(cached, cache, context, request, stream);

  const std::size_t prompt_length = ids.size();
  const std::vector<std::int32_t>& generated = result.tokens;
  const double prompt_seconds = result.prompt_seconds, total = result.total_seconds;
  const double decode_seconds = total - prompt_seconds;
  const std::string stop = result.stop;
  // The prefill reads the prompt and gives the first token; the rest come from decode forwards.
  const double prompt_rate = static_cast<double>(prompt_length) / std::max(prompt_seconds, 1e-9);
  const double decode_rate = generated.size() > 1 ? static_cast<double>(generated.size() - 1) /
                                                        std::max(decode_seconds, 1e-9)
                                                  : 0.0;
  if (o.json) {
    const std::vector<std::int32_t>& prompt = ids;
    nlohmann::json out{{"prompt_tokens", prompt_length},
                       {"prompt_ids", prompt},
                       {"generated_tokens", generated},
                       {"stop", stop},
                       {"prompt_seconds", prompt_seconds},
                       {"generate_seconds", total},
                       {"prompt_tokens_per_second", prompt_rate},
                       {"generated_tokens_per_second", decode_rate},
                       {"decode_forwards", result.decode_forwards}};
    if (request.speculative_mtp) {
      out["drafted_tokens"] = result.drafted;
      out["accepted_tokens"] = result.accepted;
      out["acceptance_rate"] = result.acceptance();
    }
    if (tokenizer) {
      std::vector<std::int32_t> text_ids = generated;
      if (!text_ids.empty() && text_ids.back() == eos) text_ids.pop_back();
      out["text"] = tokenizer->decode(text_ids);
    }
    fmt::print("{}\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    fmt::print("\n");
    fmt::print(stderr,
               "troupe generate: prompt {} tokens in {:.3f} s ({:.1f} tokens/s); generated {} "
               "tokens in {:.3f} s ({:.1f} tokens/s after the first); stopped at {}\n",
               prompt_length, prompt_seconds, prompt_rate, generated.size(), total, decode_rate,
               stop == "eos" ? "EOS" : "--max-new-tokens");
    if (request.speculative_mtp)
      fmt::print(stderr,
                 "troupe generate: MTP drafts accepted {} of {} ({:.1f}%); {:.2f} tokens per "
                 "decode forward\n",
                 result.accepted, result.drafted, 100.0 * result.acceptance(),
                 result.decode_forwards > 0 ? static_cast<double>(generated.size() - 1) /
                                                  static_cast<double>(result.decode_forwards)
                                            : 0.0);
  }
  return exit_ok;
}

}  // namespace

void add_generate_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<generate_options>();
  auto* command = app.add_subcommand(
      "generate",
      "Generate text with a Hugging Face DeepSeek-V3 directory or a troupe checkpoint: greedy or "
      "sampled, streamed to stdout, stopped at EOS");
  command->add_option("--model", o->model, "Model directory (config.json and *.safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  command->add_option("--prompt", o->prompt, "The prompt text (needs a tokenizer)");
  command->add_option("--tokens", o->tokens, "The prompt as comma-separated token ids");
  command->add_option("--tokenizer", o->tokenizer,
                      "tokenizer.json or its directory, or bytes (troupe's byte tokenizer); "
                      "default: the model directory's tokenizer.json, bytes for a troupe "
                      "checkpoint");
  command->add_flag("--chat", o->chat,
                    "Wrap the prompt as a user turn of DeepSeek-V3's chat format");
  command->add_option("--max-new-tokens", o->max_new_tokens, "Stop after this many tokens")
      ->check(within({1, 1 << 20}))
      ->capture_default_str();
  command->add_option("--temperature", o->sampling.temperature, "0: greedy (default)");
  command->add_option("--top-k", o->sampling.top_k, "Sample among the k most likely (0: all)");
  command->add_option("--top-p", o->sampling.top_p, "Sample within this probability mass");
  command->add_option("--seed", o->sampling.seed,
                      "Seed of the draws (the same seed, the same text)");
  command
      ->add_option("--speculative", o->speculative,
                   "mtp: the MTP module drafts the token after next and the model verifies "
                   "it (the same distribution; greedy gives the same text)")
      ->check(CLI::IsMember({"mtp"}));
  command
      ->add_option("--cache-dtype", o->cache_dtype,
                   "The latent KV cache's values: f32 (default without --topology) or bf16 "
                   "(DeepSeek's layout)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  command
      ->add_option("--topology", o->topology,
                   "A topology whose [inference] section sizes the KV cache (kv_cache_mib, "
                   "kv_cache_dtype, block_tokens); default: room for this request")
      ->check(CLI::ExistingFile);
  command->add_option("--device", o->device, "cpu (default) or cuda:N (FP32 on the GPU)");
  command->add_option("--threads", o->threads, "Worker threads (default: one per core)")
      ->check(within(thread_bounds));
  command->add_flag("--json", o->json,
                    "Print one JSON object (prompt_tokens, generated_tokens, text, timings) "
                    "instead of streaming");
  command->callback([o, &exit_code] {
    try {
      exit_code = generate(*o);
    } catch (const std::exception& e) {
      std::fflush(stdout);
      fmt::print(stderr, "troupe generate: {}\n", e.what());
      exit_code = exit_bad_input;
    }
  });
}

}  // namespace troupe::cli
