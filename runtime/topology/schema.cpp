#include "runtime/topology/schema.hpp"

#include <string>

namespace troupe {

namespace {

using k = value_kind;

/// The [job] section: its keys, in the order the docs list them.
section_schema job_section() {
  return {"job",
          false,
          true,
          "Names the job.",
          {
              {"name", k::string, true, "",
               "Job name: a label on every metric and in checkpoint names."},
              {"description", k::string, false, "\"\"", "Free text shown by `troupe topo check`."},
          }};
}

/// The [model] section: its keys, in the order the docs list them.
section_schema model_section() {
  return {
      "model",
      false,
      true,
      "The model: a Hugging Face DeepseekV3 config.json, by path or inline. Exactly one of "
      "`config` "
      "and `inline`.",
      {
          {"config", k::string, false, "", "Path to a config.json, relative to the topology file."},
          {"inline", k::table, false, "",
           "The config.json fields as a TOML table ([model.inline]); fields left out take "
           "transformers' DeepseekV3Config defaults."},
          {"precision",
           k::string,
           false,
           "\"fp32\"",
           "GEMM precision: fp32 (the runtime's BLAS/cuBLAS provider, exact), bf16 (GPU stages "
           "only: every GEMM's operands rounded to BF16 on the tensor cores, FP32 accumulation, "
           "FP32 weights and activations) or fp8 (the `gemm` role's plugin, DeepSeek-V3's "
           "tile/block-scaled E4M3 recipe; on a GPU the routed experts' grouped GEMMs run in "
           "BF16 for now).",
           {"fp32", "bf16", "fp8"}},
      }};
}

/// The [plugins] section: its keys, in the order the docs list them.
section_schema plugins_section() {
  return {
      "plugins",
      false,
      false,
      "Which plugin fills each role. A value is a plugin name (found as libtroupe-NAME.so on the "
      "search path) or a path to a library (containing '/' or ending in .so, relative to the "
      "topology file). Roles left out take the default plugin.",
      {
          {"attention", k::string, false, "\"mla\"", "Attention block of every layer."},
          {"moe", k::string, false, "\"moe\"", "Feed-forward block of the MoE layers."},
          {"mtp", k::string, false, "\"mtp\"",
           "Multi-token-prediction modules (used when num_nextn_predict_layers > 0)."},
          {"gemm", k::string, false, "\"fp8\"",
           "GEMM provider used when model.precision = \"fp8\"."},
          {"search_path", k::string_list, false, "[]",
           "Extra plugin directories, relative to the topology file, searched before "
           "TROUPE_PLUGIN_PATH and the install dir."},
          {"options", k::table, false, "{}",
           "Per-role options handed to the plugin as JSON: [plugins.options.moe] ..."},
      }};
}

/// The [parallel] section: its keys, in the order the docs list them.
section_schema parallel_section() {
  return {
      "parallel",
      false,
      false,
      "Parallel sizes. There are `pipeline` [[stages]] and `expert` [[expert_shards]]; each stage "
      "has `data` replicas.",
      {
          {"pipeline",
           k::integer,
           false,
           "1",
           "Pipeline-parallel size: the number of [[stages]].",
           {},
           {1, 65536}},
          {"expert",
           k::integer,
           false,
           "1",
           "Expert-parallel size: the number of [[expert_shards]] (1 with no shards: stages "
           "compute their own experts).",
           {},
           {1, 65536}},
          {"data",
           k::integer,
           false,
           "1",
           "Data-parallel size: replicas of every stage (a stage's `device` lists one per "
           "replica).",
           {},
           {1, 65536}},
          {"world",
           k::integer,
           false,
           "pipeline × data",
           "Number of stage ranks, if stated: must equal pipeline × data.",
           {},
           {1, 65536}},
          {"expert_dispatch",
           k::string,
           false,
           "fp8 when model.precision = \"fp8\", else fp32",
           "Precision of the token rows stages send to the expert shards: fp8 (E4M3 with one "
           "scale per 1x128 tile, DeepSeek-V3's dispatch), bf16 or fp32.",
           {"fp32", "bf16", "fp8"}},
          {"expert_combine",
           k::string,
           false,
           "bf16 when model.precision = \"fp8\", else fp32",
           "Precision of the expert outputs coming back to the stages, and of the gradients "
           "both ways: bf16 (DeepSeek-V3's combine) or fp32.",
           {"fp32", "bf16"}},
          {"max_nodes_per_token",
           k::integer,
           false,
           "0",
           "Node-limited routing (DeepSeek-V3's M): each token's routed experts lie on at most "
           "this many hosts of the expert shards, those with the highest sums of their top K/M "
           "affinities; it takes the place of the model's group limit (n_group, topk_group). 0: "
           "off.",
           {},
           {0, 64}},
      }};
}

/// The [schedule] section: its keys, in the order the docs list them.
section_schema schedule_section() {
  return {"schedule",
          false,
          false,
          "The pipeline schedule.",
          {
              {"kind",
               k::string,
               false,
               "\"1f1b\"",
               "sequential (reference), 1f1b, or dualpipe (even pipeline size, an even number of "
               "micro-batches, at least 2 × pipeline).",
               {"sequential", "1f1b", "dualpipe"}},
              {"micro_batches", k::integer, false, "4", "Micro-batches per step.", {}, {1, 65536}},
          }};
}

/// The [[hosts]] section: its keys, in the order the docs list them.
section_schema hosts_section() {
  return {
      "hosts",
      true,
      false,
      "Machines. Without [[hosts]] there is one: `localhost` at 127.0.0.1 with no GPUs. Each host "
      "runs one process.",
      {
          {"name", k::string, true, "", "Name that placements refer to."},
          {"address", k::string, false, "\"127.0.0.1\"", "Address other processes reach it at."},
          {"gpus",
           k::integer,
           false,
           "0",
           "CUDA devices on the host: cuda:0 … cuda:(gpus-1).",
           {},
           {0, 1024}},
      }};
}

/// The [[stages]] section: its keys, in the order the docs list them.
section_schema stages_section() {
  return {
      "stages",
      true,
      true,
      "Pipeline stages, in pipeline order. Together they hold every layer once.",
      {
          {"layers", k::index_list, true, "",
           "Consecutive decoder layers of this stage: \"0-3\" or [0, 1, 2, 3]. The embedding goes "
           "with the first stage; the head and the MTP modules with the last."},
          {"host", k::host_list, false, "the only host",
           "Host of this stage (needed with several hosts); with data > 1 a host for every "
           "replica, or a list of one host per replica."},
          {"device", k::device_list, false, "\"cpu\"",
           "\"cpu\" or \"cuda:N\"; with data > 1 a list of one device per replica."},
      }};
}

/// The [[expert_shards]] section: its keys, in the order the docs list them.
section_schema expert_shards_section() {
  return {"expert_shards",
          true,
          false,
          "Expert-parallel shards: each owns some routed experts of every MoE layer. Together they "
          "hold "
          "every expert.",
          {
              {"experts", k::index_list, false, "an even split",
               "Routed experts of this shard: \"0-15\" or a list. Leave out on every shard for an "
               "even split."},
              {"host", k::string, false, "the only host", "Host of this shard."},
              {"device", k::device_list, false, "\"cpu\"", "\"cpu\" or \"cuda:N\"."},
          }};
}

/// The [ema] section: its keys, in the order the docs list them.
section_schema ema_section() {
  return {
      "ema",
      false,
      false,
      "The CPU EMA updater of the parameters.",
      {
          {"enabled", k::boolean, false, "true", "Keep an EMA of the parameters."},
          {"decay", k::number, false, "0.999", "EMA decay, in (0, 1)."},
          {"every", k::integer, false, "1", "Update every N optimizer steps.", {}, {1, 1 << 30}},
          {"wait", k::boolean, false, "false",
           "Stages on a GPU wait for an EMA still busy with the snapshots of two updates ago. "
           "By default they skip the snapshot instead and the next one applies the decay for "
           "both (exact when the weights did not move in between): the EMA never stalls the "
           "step."},
          {"host", k::string, false, "the first host", "Host of the EMA actor."},
      }};
}

/// The [balancer] section: its keys, in the order the docs list them.
section_schema balancer_section() {
  return {
      "balancer",
      false,
      false,
      "The auxiliary-loss-free bias balancer: b_i += gamma · sign(mean load − load_i) per step.",
      {
          {"enabled", k::boolean, false, "true", "Update router biases."},
          {"gamma", k::number, false, "0.001", "Bias update speed γ (≥ 0)."},
          {"recenter", k::boolean, false, "false",
           "Shift each layer's biases to zero mean after an update."},
          {"host", k::string, false, "the first host", "Host of the balancer actor."},
      }};
}

/// The [train] section: its keys, in the order the docs list them.
section_schema train_section() {
  return {
      "train",
      false,
      false,
      "Training hyper-parameters (`troupe train`).",
      {
          {"steps", k::integer, false, "100", "Optimizer steps.", {}, {1, std::int64_t{1} << 40}},
          {"seed",
           k::integer,
           false,
           "1234",
           "Seed of parameter initialisation and data order.",
           {},
           {0, std::numeric_limits<std::int64_t>::max()}},
          {"micro_batch_size",
           k::integer,
           false,
           "2",
           "Sequences per micro-batch.",
           {},
           {1, 1 << 20}},
          {"sequence_length", k::integer, false, "64", "Tokens per sequence.", {}, {1, 1 << 24}},
          {"learning_rate", k::number, false, "3e-4", "Peak learning rate."},
          {"min_learning_rate", k::number, false, "3e-5", "Floor of the cosine decay."},
          {"warmup_steps",
           k::integer,
           false,
           "10",
           "Linear warm-up steps.",
           {},
           {0, std::int64_t{1} << 40}},
          {"weight_decay", k::number, false, "0.1", "Decoupled AdamW weight decay."},
          {"beta1", k::number, false, "0.9", "AdamW β1."},
          {"beta2", k::number, false, "0.95", "AdamW β2."},
          {"epsilon", k::number, false, "1e-8", "AdamW ε."},
          {"grad_clip", k::number, false, "1.0", "Global gradient-norm clip (0 disables)."},
          {"zero",
           k::integer,
           false,
           "0",
           "ZeRO stage of the optimizer state. 0: every holder of a replicated parameter (a "
           "data-parallel replica, DualPipe's second copy) keeps all of its AdamW moments; 1: "
           "they are split evenly among its holders, each reduces and updates its slice and "
           "sends the updated values to the others (ZeRO-1).",
           {},
           {0, 1}},
          {"zero_bucket_elements",
           k::integer,
           false,
           "16777216",
           "With zero = 1: the reduce-scatter and the all-gather go in buckets of this many "
           "elements (f32: 64 MiB by default), the next bucket once every holder's previous one "
           "is there, so what waits in memory stays a few buckets, not all the gradients.",
           {},
           {1, std::int64_t{1} << 40}},
          {"mtp_weight", k::number, false, "0.3", "λ of the MTP loss λ/D · Σ CE_k."},
          {"balance_loss_alpha", k::number, false, "1e-4", "α of the sequence-wise balance loss."},
          {"batch_ramp_steps",
           k::integer,
           false,
           "0",
           "Steps over which the micro-batches per step rise linearly from batch_ramp_start to "
           "schedule.micro_batches (0: no ramp).",
           {},
           {0, std::int64_t{1} << 40}},
          {"batch_ramp_start", k::integer, false, "1 (DualPipe: 2 × pipeline)",
           "Micro-batches per step at step 0 of the batch-size ramp."},
          {"checkpoint_every",
           k::integer,
           false,
           "0",
           "Steps between checkpoints (0: only at the end and on signals).",
           {},
           {0, std::int64_t{1} << 40}},
          {"checkpoint_dir", k::string, false, "\"checkpoints\"",
           "Where checkpoints go, relative to the working directory."},
      }};
}

/// The [data] section: its keys, in the order the docs list them.
section_schema data_section() {
  return {"data",
          false,
          false,
          "The training data.",
          {
              {"corpus", k::string, false, "\"builtin\"",
               "\"builtin\" (the shipped Jargon File), a directory (one document per file), a "
               ".jsonl file (a \"text\" field per line) or a text file (documents separated by "
               "form-feed lines); paths relative to the topology file."},
              {"tokenizer", k::string, false, "\"bytes\"",
               "\"bytes\": byte-level (ids 0-255, then the config's BOS/EOS and three FIM "
               "tokens); the only tokenizer for now."},
              {"fim_rate", k::number, false, "0.1",
               "Fraction of documents turned into Fill-in-the-Middle (PSM), in [0, 1]."},
          }};
}

/// The [inference] section: its keys, in the order the docs list them.
section_schema inference_section() {
  return {"inference",
          false,
          false,
          "MLA's latent KV cache for generation (`troupe generate --topology`): one pool of blocks "
          "on the model's device that every sequence shares (runtime/inference/latent_cache.hpp).",
          {
              {"kv_cache_mib",
               k::integer,
               false,
               "1024",
               "Memory of the cache pool, MiB; DeepSeek-V3 takes 70,272 bytes per token in bf16.",
               {},
               {1, 1 << 30}},
              {"kv_cache_dtype",
               k::string,
               false,
               "\"bf16\"",
               "What the cache stores: bf16 (DeepSeek-V3's inference layout) or f32 (exact against "
               "recomputing the whole sequence).",
               {"bf16", "f32"}},
              {"block_tokens",
               k::integer,
               false,
               "64",
               "Tokens per cache block: a sequence takes blocks as it grows.",
               {},
               {1, 1 << 16}},
          }};
}

/// The [serve] section: its keys, in the order the docs list them.
section_schema serve_section() {
  return {"serve",
          false,
          false,
          "`troupe serve`: the OpenAI-compatible HTTP server over the model, with continuous "
          "batching (runtime/serve/). The KV cache is [inference]'s.",
          {
              {"listen", k::string, false, "\"127.0.0.1:8000\"",
               "Address of the HTTP server, \"HOST:PORT\"; port 0 picks a free port (printed at "
               "start)."},
              {"model_name", k::string, false, "the model directory's name",
               "What requests name in \"model\" and GET /v1/models lists."},
              {"max_batch", k::integer, false, "32", "Sequences decoded together.", {}, {1, 4096}},
              {"max_queue",
               k::integer,
               false,
               "256",
               "Requests waiting to join the batch; one more is answered 429.",
               {},
               {0, 1 << 20}},
              {"prefill_chunk",
               k::integer,
               false,
               "512",
               "Prompt tokens a sequence reads per step, so that a long prompt does not stall the "
               "others' decoding (0: a whole prompt in one step).",
               {},
               {0, 1 << 24}},
              {"context_length",
               k::integer,
               false,
               "0",
               "Prompt + completion tokens a request may take (0: the model's "
               "max_position_embeddings, within what the KV cache holds).",
               {},
               {0, 1 << 30}},
              {"api_key_file", k::string, false, "\"\" (none)",
               "A file whose first line is the API key every /v1/ request must bear "
               "(Authorization: Bearer KEY), relative to the topology file."},
              {"drain_seconds",
               k::integer,
               false,
               "60",
               "On SIGTERM or SIGINT: how long requests still running may take to finish before "
               "the server exits anyway.",
               {},
               {0, 86400}},
              {"prefill_host", k::string, false, "\"\" (the first host)",
               "The host whose process serves HTTP, schedules the requests and runs the prefill "
               "instances (the colocated instance without decode_instances); rank 0 when the "
               "server spans several processes."},
              {"device", k::string, false, "\"cpu\"",
               "Where the serving instances compute: cpu or cuda:N of their host (`troupe serve "
               "--device` wins)."},
              {"prefill_device", k::string, false, "\"\" (device)",
               "With decode_instances: where the prefill instances compute (on the first host); "
               "a sequence's cached rows move to its decode instance's device."},
              {"decode_device", k::string, false, "\"\" (device)",
               "With decode_instances: where the decode instances compute (on the decode hosts, "
               "or the first host without them)."},
              {"prefill_instances",
               k::integer,
               false,
               "1",
               "With decode_instances: instances that only read prompts and choose each "
               "sequence's first token, then hand it with its cached rows to a decode instance.",
               {},
               {1, 64}},
              {"decode_instances",
               k::integer,
               false,
               "0",
               "Prefill/decode disaggregation: instances that decode the sequences the prefill "
               "instances hand them, picked by load (0: prefill and decode share one batch). Each "
               "instance holds its own copy of the weights and a KV cache of kv_cache_mib.",
               {},
               {0, 64}},
              {"decode_host", k::string, false, "\"\" (the serving process)",
               "With decode_instances: the host whose process runs the decode instances; the "
               "first host runs the HTTP server and the prefill instances, and each prefilled "
               "sequence moves with its cached rows between the two processes (UCX). `troupe "
               "serve` starts the decode process itself on one machine; under a launcher "
               "(troupe launch's environments: torchrun, Open MPI, Slurm, LeaderWorkerSet) every "
               "rank runs `troupe serve` with the same arguments."},
              {"decode_hosts", k::string_list, false, "[] (the serving process)",
               "decode_host for several decode processes: each host's process runs "
               "decode_instances decode instances (rank i + 1 on the i-th host), and the "
               "scheduler picks among all of them by load; one that is lost fails only the "
               "sequences it held. Give decode_host or decode_hosts, not both."},
              {"expert_shards",
               k::integer,
               false,
               "0",
               "Expert parallelism within each instance: its routed experts on this many expert "
               "shards, placed by DeepSeek's EPLB (0: the moe plugin computes whole layers). The "
               "shards compute on the CPU.",
               {},
               {0, 4096}},
              {"redundant_experts",
               k::integer,
               false,
               "0",
               "With expert_shards: physical expert slots per MoE layer beyond one per expert, "
               "given to the heaviest experts (their tokens split between the copies); routed "
               "experts + redundant_experts must divide by expert_shards.",
               {},
               {0, 1 << 16}},
              {"expert_host", k::string, false, "\"\" (each instance's process)",
               "With expert_shards: the host whose process holds the expert shards of every "
               "serving instance (expert_hosts for several)."},
              {"expert_hosts", k::string_list, false, "[] (each instance's process)",
               "With expert_shards: hosts whose processes hold the serving instances' expert "
               "shards, shard s of each instance on host s x hosts / expert_shards (rank after "
               "the decode hosts'); the instances send each MoE layer's rows there and experts "
               "move between these processes when they are re-placed. Other hosts than the "
               "first and the decode hosts; give expert_host or expert_hosts, not both."},
              {"rebalance_interval", k::number, false, "600",
               "With expert_shards: seconds between re-placements of the experts (and their "
               "redundant copies) from the load observed since the last one, done between two "
               "decode steps without dropping a request (0: never; DeepSeek re-places every ten "
               "minutes)."},
          }};
}

/// The [monitoring] section: its keys, in the order the docs list them.
section_schema monitoring_section() {
  return {
      "monitoring",
      false,
      false,
      "Metrics for Prometheus.",
      {
          {"metrics", k::string, false, "\"\" (off)",
           "Address of the metrics endpoint, \"HOST:PORT\"; port 0 picks a free port (reported at "
           "start)."},
          {"per_expert_series", k::boolean, false, "true",
           "Export one expert-load series per layer × expert (false: per-layer aggregates only)."},
      }};
}

/// The [control] section: its keys, in the order the docs list them.
section_schema control_section() {
  return {"control",
          false,
          false,
          "The job's control endpoint, for `troupe ctl` (docs/control.md).",
          {
              {"listen", k::string, false, "\"\" (off)",
               "Loopback address of the control endpoint, \"HOST:PORT\" (127.0.0.1, ::1 or "
               "localhost); port 0 picks a free port. Requests need the token the job writes to a "
               "file only its user can read."},
          }};
}

const std::vector<section_schema>& sections() {
  static const std::vector<section_schema> schema = {
      job_section(),       model_section(),    plugins_section(),    parallel_section(),
      schedule_section(),  hosts_section(),    stages_section(),     expert_shards_section(),
      ema_section(),       balancer_section(), train_section(),      data_section(),
      inference_section(), serve_section(),    monitoring_section(), control_section(),
  };
  return schema;
}

}  // namespace

const key_schema* section_schema::find(std::string_view key) const {
  for (const auto& k : keys)
    if (k.name == key) return &k;
  return nullptr;
}

std::vector<std::string> section_schema::key_names() const {
  std::vector<std::string> names;
  for (const auto& k : keys) names.emplace_back(k.name);
  return names;
}

std::span<const section_schema> topology_schema() {
  return sections();
}

const section_schema* find_section(std::string_view name) {
  for (const auto& s : sections())
    if (s.name == name) return &s;
  return nullptr;
}

std::string_view name_of(value_kind kind) {
  switch (kind) {
    case value_kind::string:
      return "a string";
    case value_kind::integer:
      return "an integer";
    case value_kind::number:
      return "a number";
    case value_kind::boolean:
      return "true or false";
    case value_kind::string_list:
      return "an array of strings";
    case value_kind::index_list:
      return "a range string like \"0-3\" or an array of integers";
    case value_kind::device_list:
      return "a device (\"cpu\", \"cuda:N\") or an array of devices";
    case value_kind::host_list:
      return "a host name or an array of host names";
    case value_kind::table:
      return "a table";
  }
  return "a value";
}

}  // namespace troupe
