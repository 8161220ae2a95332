#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/device/device.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/plugin/kind.hpp"
#include "runtime/schedule/schedule_kind.hpp"
#include "runtime/topology/diagnostic.hpp"

namespace troupe {

// Every value the file may leave out is filled by the parser from the schema's default
// (schema.cpp, which also writes docs/topology.md): no default is repeated here.

struct host_spec {
  std::string name;
  std::string address;
  int gpus = 0;
};

/// Where an actor runs.
struct placement {
  std::string host;
  device where = device::cpu();
};

struct stage_spec {
  std::vector<int> layers;
  std::vector<placement> replicas;  ///< one per data-parallel replica
};

struct expert_shard_spec {
  std::vector<int> experts;  ///< after validation: explicit or from the even split
  placement place;
};

/// The plugin chosen for one role.
struct plugin_choice {
  plugin_kind role = plugin_kind::attention;
  std::string reference;  ///< a plugin name or a library path (relative paths resolved)
  bool explicit_choice = false;
  std::string options_json = "{}";
  std::optional<std::filesystem::path> resolved;  ///< the library file, when found
};

struct schedule_spec {
  schedule_kind kind = schedule_kind::sequential;
  int micro_batches = 0;
};

struct ema_spec {
  bool enabled = false;
  double decay = 0.0;
  int every = 0;
  bool wait = false;  ///< GPU holders wait for a busy EMA instead of skipping snapshots
  std::string host;
};

struct balancer_spec {
  bool enabled = false;
  double gamma = 0.0;
  bool recenter = false;
  std::string host;
};

struct train_spec {
  std::int64_t steps = 0;
  std::int64_t seed = 0;
  std::int64_t micro_batch_size = 0;
  std::int64_t sequence_length = 0;
  double learning_rate = 0;
  double min_learning_rate = 0;
  std::int64_t warmup_steps = 0;
  double weight_decay = 0;
  double beta1 = 0;
  double beta2 = 0;
  double epsilon = 0;
  double grad_clip = 0;
  int zero = 0;  ///< ZeRO stage: 1 splits the replicated parameters' moments among their holders
  std::int64_t zero_bucket_elements =
      0;  ///< ZeRO-1's exchanges go in buckets of this many elements
  double mtp_weight = 0;
  double balance_loss_alpha = 0;
  std::int64_t batch_ramp_steps = 0;  ///< 0: every step runs schedule.micro_batches
  std::int64_t batch_ramp_start = 0;
  std::int64_t checkpoint_every = 0;
  std::string checkpoint_dir;
};

struct data_spec {
  std::string corpus;
  std::string tokenizer;
  double fim_rate = 0.0;
};

/// [inference]: MLA's latent KV cache for generation.
struct inference_spec {
  std::int64_t kv_cache_mib = 1024;
  std::string kv_cache_dtype = "bf16";
  std::int64_t block_tokens = 64;
};

/// [serve]: `troupe serve`'s HTTP server and batching.
struct serve_spec {
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string model_name;  ///< empty: the model directory's name
  std::int64_t max_batch = 32;
  std::int64_t max_queue = 256;
  std::int64_t prefill_chunk = 512;
  std::int64_t context_length = 0;     ///< 0: the model's, within the cache
  std::filesystem::path api_key_file;  ///< absolute; empty: no key
  std::int64_t drain_seconds = 60;
  /// The host of the HTTP server, the scheduler and the prefill instances (rank 0 across
  /// processes); validation fills in the first host when the file names none.
  std::string prefill_host;
  std::string device = "cpu";          ///< where the instances compute ("cpu", "cuda:N")
  std::string prefill_device;          ///< the prefill instances' ("": device)
  std::string decode_device;           ///< the decode instances' ("": device)
  std::int64_t prefill_instances = 1;  ///< with decode_instances > 0
  std::int64_t decode_instances = 0;   ///< 0: prefill and decode in one batch
  /// The hosts whose processes run decode instances (decode_instances each), in rank order;
  /// empty: decode instances in the serving process.
  std::vector<std::string> decode_hosts;
  std::int64_t expert_shards = 0;  ///< 0: whole MoE layers in the model
  /// The hosts whose processes hold the instances' expert shards (shard s of every instance on
  /// host s * hosts / expert_shards), in rank order after the decode hosts; empty: each instance's
  /// shards in its own process.
  std::vector<std::string> expert_hosts;
  std::int64_t redundant_experts = 0;  ///< extra expert slots per MoE layer
  double rebalance_interval = 600.0;   ///< seconds; 0: never
};

struct monitoring_spec {
  std::string metrics_host;  ///< empty: no metrics endpoint
  int metrics_port = 0;
  bool per_expert_series = false;
};

struct control_spec {
  std::string host;  ///< empty: no control endpoint
  int port = 0;
};

enum class precision { fp32, bf16, fp8 };

/// "fp32", "bf16" or "fp8", as topology files spell it.
inline std::string_view to_string(precision p) {
  return p == precision::fp8 ? "fp8" : p == precision::bf16 ? "bf16" : "fp32";
}

/// A parsed and validated topology file.
struct topology {
  std::filesystem::path file;
  std::string name;
  std::string description;

  model_config model;
  std::filesystem::path model_config_file;  ///< empty when the model is inline
  precision gemm_precision = precision::fp32;
  /// Expert parallelism on the wire ([parallel] expert_dispatch, expert_combine).
  precision expert_dispatch = precision::fp32;
  precision expert_combine = precision::fp32;
  /// Node-limited routing: a token's experts on at most this many hosts ([parallel]); 0: off.
  int max_nodes_per_token = 0;

  std::vector<plugin_choice> plugins;  ///< the roles this model uses, in kind order
  std::vector<std::string> plugin_search_path;

  int pipeline = 0;
  int expert = 0;
  int data = 0;

  schedule_spec schedule;
  std::vector<host_spec> hosts;  ///< never empty after parsing
  std::vector<stage_spec> stages;
  std::vector<expert_shard_spec> expert_shards;
  ema_spec ema;
  balancer_spec balancer;
  train_spec train;
  data_spec data_source;
  inference_spec inference;
  serve_spec serve;
  monitoring_spec monitoring;
  control_spec control;

  /// Position of each key and section by dotted path ("parallel.pipeline", "stages[1].layers",
  /// "stages[1]"); where diagnostics point.
  std::map<std::string, source_position> positions;

  /// Position of `path`, or of its closest parent that has one, or the file.
  source_position where(const std::string& path) const;
  const plugin_choice* plugin_for(plugin_kind role) const;
  const host_spec* find_host(const std::string& host_name) const;
  /// The expert shards' hosts as dense indices (the hosts holding shards, in [[hosts]] order):
  /// the nodes of node-limited routing, one per shard.
  std::vector<std::int32_t> shard_nodes() const;
  /// Node-limited routing's groups: each routed expert's shard's node; empty without shards.
  std::vector<std::int32_t> node_of_experts() const;
};

/// "HOST:PORT" (an IPv6 host in brackets), the port 0 to 65535 (0: a free one), as [serve]
/// listen, [monitoring] metrics and [control] listen take it; nothing when it is not one.
std::optional<std::pair<std::string, int>> parse_listen_address(std::string_view address);

}  // namespace troupe
