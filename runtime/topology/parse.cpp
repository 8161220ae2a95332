// TOML -> topology: the schema checks (unknown keys with the nearest valid one, missing keys,
// value types and choices) and the extraction of values with their positions. Meaning is checked
// in validate.cpp.
#include <charconv>
#include <cstdlib>
#include <optional>
#include <tuple>

#include <toml++/toml.h>
#include <nlohmann/json.hpp>

#include "runtime/core/input_limits.hpp"
#include "runtime/core/text.hpp"
#include "runtime/topology/load.hpp"
#include "runtime/topology/overrides.hpp"
#include "runtime/topology/schema.hpp"
#include "runtime/topology/schema_check.hpp"
#include "runtime/topology/toml_json.hpp"

namespace troupe {

namespace {

namespace fs = std::filesystem;

/// The precision a topology spells `name`, or `fallback` (the schema check reports the name).
precision precision_named(const std::string& name, precision fallback) {
  for (precision p : {precision::fp32, precision::bf16, precision::fp8})
    if (name == to_string(p)) return p;
  return fallback;
}

/// The schema's default of `section`.`key` as a T, when the schema states it as a literal: a
/// number, true or false, or a quoted string. Defaults described in words are the reader's.
template <class T>
std::optional<T> schema_default(std::string_view section, std::string_view key) {
  const section_schema* s = find_section(section);
  const key_schema* k = s != nullptr ? s->find(key) : nullptr;
  if (k == nullptr) fail("topology schema: no key {}.{}", section, key);
  const std::string text(k->default_text);
  if constexpr (std::is_same_v<T, std::string>) {
    if (text.size() >= 2 && text.front() == '"' && text.back() == '"' &&
        text.find('"', 1) == text.size() - 1)
      return text.substr(1, text.size() - 2);
  } else if constexpr (std::is_same_v<T, bool>) {
    if (text == "true" || text == "false") return text == "true";
  } else {
    T value{};
    const char* end = text.data() + text.size();
    if constexpr (std::is_floating_point_v<T>) {
      char* parsed = nullptr;
      value = std::strtod(text.c_str(), &parsed);
      if (!text.empty() && parsed == end) return value;
    } else {
      auto [parsed, problem] = std::from_chars(text.data(), end, value);
      if (problem == std::errc() && parsed == end) return value;
    }
  }
  return std::nullopt;
}

/// Reads one file's sections into a topology, collecting diagnostics.
class topology_parser {
 public:
  topology_parser(topology& topo, std::vector<diagnostic>& diagnostics)
      : topo_(topo), diagnostics_(diagnostics), file_(topo.file.string()) {}

  void parse(const toml::table& root) {
    check_against_schema(root, topo_, diagnostics_);
    read_job(root);
    read_model(root);
    read_plugins(root);
    read_parallel(root);
    read_schedule(root);
    read_hosts(root);
    read_stages(root);
    read_expert_shards(root);
    read_ema(root);
    read_balancer(root);
    read_train(root);
    read_data(root);
    read_inference(root);
    read_serve(root);
    read_monitoring(root);
    read_control(root);
  }

 private:
  void error(const source_position& where, std::string message) {
    diagnostics_.push_back({where, diagnostic::severity::error, std::move(message)});
  }

  // ---- typed reads (types are checked above; a mistyped key keeps its default) ------------

  /// Reads `section`.`key` from `table` (null: the section is absent) into `out`. A key left
  /// out takes the schema's default when that is a literal (a number, true or false, a quoted
  /// string): the defaults live in schema.cpp alone. A default described in words ("pipeline ×
  /// data") is computed by the caller, which sets `out` first.
  template <class T>
  void read(std::string_view section, const toml::table* table, std::string_view key, T& out) {
    if (auto fallback = schema_default<T>(section, key)) out = *fallback;
    if (table == nullptr) return;
    const toml::node* node = table->get(key);
    if (node == nullptr) return;
    if constexpr (std::is_same_v<T, int>) {
      if (auto v = node->value_exact<std::int64_t>()) out = static_cast<int>(*v);
    } else if constexpr (std::is_same_v<T, double>) {
      if (auto v = node->value<double>()) out = *v;
    } else {
      if (auto v = node->value_exact<T>()) out = *v;
    }
  }

  static const toml::table* section(const toml::table& root, std::string_view name) {
    const toml::node* node = root.get(name);
    return node != nullptr ? node->as_table() : nullptr;
  }

  /// A list of layers or experts; ranges are expanded only below `limit` (indices beyond it
  /// are reported by validate.cpp, once per item).
  std::vector<int> read_indices(const toml::node& node, const std::string& path, int limit) {
    if (auto text = node.value_exact<std::string>()) {
      try {
        return parse_index_ranges(*text, limit);
      } catch (const troupe::error& e) {
        error(position_of(node.source(), file_), fmt::format("{}: {}", path, e.what()));
        return {};
      }
    }
    std::vector<int> out;
    if (const auto* array = node.as_array()) {
      for (const auto& item : *array) {
        auto v = item.value_exact<std::int64_t>();
        if (!v || *v < 0 || *v > 1 << 20) {
          error(position_of(item.source(), file_),
                fmt::format("{}: indices must be integers from 0 to 2^20", path));
          return {};
        }
        out.push_back(static_cast<int>(*v));
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  /// The bound of layer or expert indices: the model's count once it is read, else 2^20.
  int index_limit(std::int64_t model_count) const {
    return model_read_ ? static_cast<int>(std::max<std::int64_t>(model_count, 1)) : 1 << 20;
  }

  /// Replicas' placements: `host` and `device` give one for all or a list of one per replica.
  std::vector<placement> read_placements(std::string_view section_name, const toml::table& table,
                                         const std::string& path) {
    const auto* list = table.get_as<toml::array>("host");
    std::vector<std::string> hosts(list != nullptr && !list->empty() ? list->size() : 1);
    for (std::size_t i = 0; list != nullptr && i < list->size(); ++i)
      hosts[i] = (*list)[i].value_or(std::string());
    if (list == nullptr) read(section_name, &table, "host", hosts.front());
    std::vector<device> devices;
    auto parse_one = [&](const toml::node& item) {
      try {
        devices.push_back(parse_device(item.value_or(std::string())));
      } catch (const troupe::error& e) {
        error(position_of(item.source(), file_), fmt::format("{}.device: {}", path, e.what()));
      }
    };
    const toml::node* node = table.get("device");
    if (node == nullptr)
      devices.push_back(parse_device(*schema_default<std::string>(section_name, "device")));
    else if (const auto* array = node->as_array())
      for (const auto& item : *array) parse_one(item);
    else if (node->is_string())
      parse_one(*node);
    if (hosts.size() > 1 && devices.size() > 1 && hosts.size() != devices.size()) {
      error(position_of(table.get("host")->source(), file_),
            fmt::format("{}: {} hosts but {} devices; give one host or one device for every "
                        "replica, or lists of the same length",
                        path, hosts.size(), devices.size()));
      return {};
    }
    std::vector<placement> out;
    for (std::size_t r = 0; r < std::max(hosts.size(), devices.size()); ++r)
      out.push_back({hosts[hosts.size() > 1 ? r : 0],
                     devices.empty() ? device::cpu() : devices[devices.size() > 1 ? r : 0]});
    return out;
  }

  // ---- sections -----------------------------------------------------------------------------

  void read_job(const toml::table& root) {
    const auto* job = section(root, "job");
    read("job", job, "name", topo_.name);
    read("job", job, "description", topo_.description);
  }

  void read_model(const toml::table& root) {
    const auto* model = section(root, "model");
    if (model == nullptr) return;
    std::string precision_name;
    read("model", model, "precision", precision_name);
    // Invalid choices are reported by the schema check; parsing goes on with the default.
    topo_.gemm_precision = precision_named(precision_name, precision::fp32);
    const toml::node* config = model->get("config");
    const toml::node* inline_config = model->get("inline");
    if ((config == nullptr) == (inline_config == nullptr)) {
      error(topo_.where("model"),
            config == nullptr
                ? "[model] needs `config = \"path/to/config.json\"` or a [model.inline] table"
                : "[model] has both `config` and [model.inline]; keep one");
      return;
    }
    try {
      if (config != nullptr) {
        const fs::path file(config->value_or(std::string()));
        topo_.model_config_file = beside_topology(file);
        if (!fs::is_regular_file(topo_.model_config_file)) {
          error(position_of(config->source(), file_),
                fmt::format("model.config: no file {} (paths are relative to the topology file)",
                            topo_.model_config_file.string()));
          return;
        }
        topo_.model = load_model_config(topo_.model_config_file);
        model_read_ = true;
      } else if (const auto* table = inline_config->as_table()) {
        struct inline_context {
          const toml::table* table;
          std::string file;
        } context{table, file_};
        auto locate = [](const void* c, const std::string& field) {
          const auto* ctx = static_cast<const inline_context*>(c);
          const std::string top = field.substr(0, field.find('.'));
          if (const toml::node* node = ctx->table->get(top))
            return position_of(node->source(), ctx->file);
          return position_of(ctx->table->source(), ctx->file);
        };
        topo_.model = parse_model_config(to_json(*table), file_, locate, &context);
        model_read_ = true;
      }
    } catch (const model_config_error& e) {
      error(e.where(), fmt::format("model config field '{}': {}", e.field(), e.problem()));
    } catch (const troupe::error& e) {
      error(topo_.where("model.config"), e.what());
    }
  }

  void read_plugins(const toml::table& root) {
    const auto* plugins = section(root, "plugins");
    for (plugin_kind kind :
         {plugin_kind::attention, plugin_kind::moe, plugin_kind::mtp, plugin_kind::gemm}) {
      plugin_choice choice;
      choice.role = kind;
      choice.reference = kind == plugin_kind::gemm ? "fp8" : std::string(name_of(kind));
      if (kind == plugin_kind::attention) choice.reference = "mla";
      if (plugins != nullptr) {
        if (const toml::node* node = plugins->get(name_of(kind));
            node != nullptr && node->is_string()) {
          choice.reference = node->value_or(std::string());
          choice.explicit_choice = true;
        }
      }
      topo_.plugins.push_back(choice);
    }
    if (plugins != nullptr) {
      if (const auto* dirs = plugins->get_as<toml::array>("search_path"))
        for (const auto& dir : *dirs)
          if (auto text = dir.value_exact<std::string>()) topo_.plugin_search_path.push_back(*text);
      if (const auto* options = plugins->get_as<toml::table>("options")) {
        for (auto&& [key, node] : *options) {
          auto role = parse_plugin_kind(key.str());
          if (!role) {
            error(
                position_of(key.source(), file_),
                fmt::format("plugins.options.{}: no such role; roles are attention, moe, mtp, gemm",
                            key.str()));
            continue;
          }
          if (!node.is_table()) {
            error(position_of(node.source(), file_),
                  fmt::format("plugins.options.{} must be a table of options", key.str()));
            continue;
          }
          for (auto& choice : topo_.plugins)
            if (choice.role == *role) choice.options_json = to_json(node).dump();
        }
      }
    }
  }

  void read_parallel(const toml::table& root) {
    const auto* parallel = section(root, "parallel");
    read("parallel", parallel, "pipeline", topo_.pipeline);
    read("parallel", parallel, "expert", topo_.expert);
    read("parallel", parallel, "data", topo_.data);
    for (const char* key : {"pipeline", "expert", "data", "world"}) {
      int value = 1;
      read("parallel", parallel, key, value);
      if (value < 1)
        error(topo_.where(fmt::format("parallel.{}", key)),
              fmt::format("parallel.{} must be at least 1, got {}", key, value));
    }
    if (parallel != nullptr && parallel->contains("world")) {
      int world = 0;
      read("parallel", parallel, "world", world);
      if (world != topo_.pipeline * topo_.data)
        error(
            topo_.where("parallel.world"),
            fmt::format(
                "parallel sizes do not multiply out: world = {} but pipeline × data = {} × {} = {}",
                world, topo_.pipeline, topo_.data, topo_.pipeline * topo_.data));
    }
    read_expert_wire(parallel);
  }

  /// The expert payload's precisions; they follow model.precision unless the file says.
  void read_expert_wire(const toml::table* parallel) {
    const bool fp8 = topo_.gemm_precision == precision::fp8;
    std::string dispatch = fp8 ? "fp8" : "fp32", combine = fp8 ? "bf16" : "fp32";
    read("parallel", parallel, "expert_dispatch", dispatch);
    read("parallel", parallel, "expert_combine", combine);
    read("parallel", parallel, "max_nodes_per_token", topo_.max_nodes_per_token);
    topo_.expert_dispatch = precision_named(dispatch, fp8 ? precision::fp8 : precision::fp32);
    topo_.expert_combine = precision_named(combine, fp8 ? precision::bf16 : precision::fp32);
    if (topo_.expert_combine == precision::fp8) topo_.expert_combine = precision::bf16;
  }

  void read_schedule(const toml::table& root) {
    const auto* schedule = section(root, "schedule");
    std::string kind;
    read("schedule", schedule, "kind", kind);
    // An invalid choice is reported by the schema check; parsing goes on with the default.
    if (kind == "sequential" || kind == "1f1b" || kind == "dualpipe")
      topo_.schedule.kind = parse_schedule_kind(kind);
    read("schedule", schedule, "micro_batches", topo_.schedule.micro_batches);
  }

  void read_hosts(const toml::table& root) {
    const auto* hosts = root.get_as<toml::array>("hosts");
    if (hosts == nullptr || !hosts->is_array_of_tables()) {
      topo_.hosts.push_back({"localhost", "127.0.0.1", 0});
      return;
    }
    for (std::size_t i = 0; i < hosts->size(); ++i) {
      const auto& table = *hosts->get(i)->as_table();
      host_spec host;
      read("hosts", &table, "name", host.name);
      read("hosts", &table, "address", host.address);
      read("hosts", &table, "gpus", host.gpus);
      topo_.hosts.push_back(host);
    }
  }

  void read_stages(const toml::table& root) {
    const auto* stages = root.get_as<toml::array>("stages");
    if (stages == nullptr || !stages->is_array_of_tables()) return;
    for (std::size_t i = 0; i < stages->size(); ++i) {
      const auto& table = *stages->get(i)->as_table();
      const std::string path = fmt::format("stages[{}]", i);
      stage_spec stage;
      if (const toml::node* layers = table.get("layers"); layers != nullptr)
        stage.layers =
            read_indices(*layers, path + ".layers", index_limit(topo_.model.num_hidden_layers));
      stage.replicas = read_placements("stages", table, path);
      topo_.stages.push_back(std::move(stage));
    }
  }

  void read_expert_shards(const toml::table& root) {
    const auto* shards = root.get_as<toml::array>("expert_shards");
    if (shards == nullptr || !shards->is_array_of_tables()) return;
    for (std::size_t i = 0; i < shards->size(); ++i) {
      const auto& table = *shards->get(i)->as_table();
      const std::string path = fmt::format("expert_shards[{}]", i);
      expert_shard_spec shard;
      if (const toml::node* experts = table.get("experts"); experts != nullptr)
        shard.experts =
            read_indices(*experts, path + ".experts", index_limit(topo_.model.n_routed_experts));
      auto places = read_placements("expert_shards", table, path);
      if (places.size() > 1)
        error(topo_.where(path + ".device"),
              fmt::format("{}: an expert shard has one host and one device", path));
      if (!places.empty()) shard.place = places.front();
      topo_.expert_shards.push_back(std::move(shard));
    }
  }

  void read_ema(const toml::table& root) {
    const auto* ema = section(root, "ema");
    read("ema", ema, "enabled", topo_.ema.enabled);
    read("ema", ema, "decay", topo_.ema.decay);
    read("ema", ema, "every", topo_.ema.every);
    read("ema", ema, "wait", topo_.ema.wait);
    read("ema", ema, "host", topo_.ema.host);
  }

  void read_balancer(const toml::table& root) {
    const auto* balancer = section(root, "balancer");
    read("balancer", balancer, "enabled", topo_.balancer.enabled);
    read("balancer", balancer, "gamma", topo_.balancer.gamma);
    read("balancer", balancer, "recenter", topo_.balancer.recenter);
    read("balancer", balancer, "host", topo_.balancer.host);
  }

  void read_train(const toml::table& root) {
    const auto* train = section(root, "train");
    auto& t = topo_.train;
    read("train", train, "steps", t.steps);
    read("train", train, "seed", t.seed);
    read("train", train, "micro_batch_size", t.micro_batch_size);
    read("train", train, "sequence_length", t.sequence_length);
    read("train", train, "learning_rate", t.learning_rate);
    read("train", train, "min_learning_rate", t.min_learning_rate);
    read("train", train, "warmup_steps", t.warmup_steps);
    read("train", train, "weight_decay", t.weight_decay);
    read("train", train, "beta1", t.beta1);
    read("train", train, "beta2", t.beta2);
    read("train", train, "epsilon", t.epsilon);
    read("train", train, "grad_clip", t.grad_clip);
    read("train", train, "zero", t.zero);
    read("train", train, "zero_bucket_elements", t.zero_bucket_elements);
    read("train", train, "mtp_weight", t.mtp_weight);
    read("train", train, "balance_loss_alpha", t.balance_loss_alpha);
    read("train", train, "batch_ramp_steps", t.batch_ramp_steps);
    t.batch_ramp_start = topo_.schedule.kind == schedule_kind::dualpipe ? 2 * topo_.pipeline : 1;
    read("train", train, "batch_ramp_start", t.batch_ramp_start);
    read("train", train, "checkpoint_every", t.checkpoint_every);
    read("train", train, "checkpoint_dir", t.checkpoint_dir);
  }

  void read_data(const toml::table& root) {
    const auto* data = section(root, "data");
    read("data", data, "corpus", topo_.data_source.corpus);
    read("data", data, "tokenizer", topo_.data_source.tokenizer);
    read("data", data, "fim_rate", topo_.data_source.fim_rate);
  }

  /// A path the file names: as it is when absolute, else relative to the topology file.
  std::filesystem::path beside_topology(const std::filesystem::path& file) const {
    return file.is_absolute() ? file : (topo_.file.parent_path() / file).lexically_normal();
  }

  /// "HOST:PORT" of `key` (port 0 to 65535), or nullopt after an error naming the key.
  std::optional<std::pair<std::string, int>> read_address(const std::string& key,
                                                          const std::string& address) {
    auto parsed = parse_listen_address(address);
    if (!parsed)
      error(topo_.where(key),
            fmt::format("{} = \"{}\" must be \"HOST:PORT\" with a port from 0 to 65535 (0 picks a "
                        "free port)",
                        key, address));
    return parsed;
  }

  void read_inference(const toml::table& root) {
    const auto* inference = section(root, "inference");
    read("inference", inference, "kv_cache_mib", topo_.inference.kv_cache_mib);
    read("inference", inference, "kv_cache_dtype", topo_.inference.kv_cache_dtype);
    read("inference", inference, "block_tokens", topo_.inference.block_tokens);
  }

  void read_serve(const toml::table& root) {
    const auto* serve = section(root, "serve");
    serve_spec& s = topo_.serve;
    std::string address, key_file;
    read("serve", serve, "listen", address);
    if (!address.empty())
      if (auto parsed = read_address("serve.listen", address)) std::tie(s.host, s.port) = *parsed;
    read("serve", serve, "model_name", s.model_name);
    read("serve", serve, "max_batch", s.max_batch);
    read("serve", serve, "max_queue", s.max_queue);
    read("serve", serve, "prefill_chunk", s.prefill_chunk);
    read("serve", serve, "context_length", s.context_length);
    read("serve", serve, "api_key_file", key_file);
    if (!key_file.empty()) s.api_key_file = beside_topology(key_file);
    read("serve", serve, "drain_seconds", s.drain_seconds);
    read("serve", serve, "prefill_host", s.prefill_host);
    read("serve", serve, "device", s.device);
    read("serve", serve, "prefill_device", s.prefill_device);
    read("serve", serve, "decode_device", s.decode_device);
    read("serve", serve, "prefill_instances", s.prefill_instances);
    read("serve", serve, "decode_instances", s.decode_instances);
    read_serve_hosts(serve, "decode_host", "decode_hosts", s.decode_hosts);
    read("serve", serve, "expert_shards", s.expert_shards);
    read_serve_hosts(serve, "expert_host", "expert_hosts", s.expert_hosts);
    read("serve", serve, "redundant_experts", s.redundant_experts);
    read("serve", serve, "rebalance_interval", s.rebalance_interval);
  }

  /// `decode_host = "HOST"` or `decode_hosts = [...]`; `expert_hosts = [...]`.
  void read_serve_hosts(const toml::table* serve, const char* one_key, const char* list_key,
                        std::vector<std::string>& out) {
    const toml::node* one = serve != nullptr ? serve->get(one_key) : nullptr;
    const toml::node* many = serve != nullptr ? serve->get(list_key) : nullptr;
    if (one != nullptr && many != nullptr)
      return error(
          position_of(many->source(), file_),
          fmt::format("serve.{}: give {} or {} (a list), not both", list_key, one_key, list_key));
    if (auto text = one != nullptr ? one->value_exact<std::string>() : std::nullopt;
        text && !text->empty())
      out.push_back(*text);
    if (const auto* list = many != nullptr ? many->as_array() : nullptr)
      for (std::size_t i = 0; i < list->size(); ++i) {
        topo_.positions[fmt::format("serve.{}[{}]", list_key, i)] =
            position_of((*list)[i].source(), file_);
        if (auto text = (*list)[i].value_exact<std::string>()) out.push_back(*text);
      }
  }

  void read_monitoring(const toml::table& root) {
    const auto* monitoring = section(root, "monitoring");
    read("monitoring", monitoring, "per_expert_series", topo_.monitoring.per_expert_series);
    std::string address;
    read("monitoring", monitoring, "metrics", address);
    if (address.empty()) return;
    if (auto parsed = read_address("monitoring.metrics", address)) {
      topo_.monitoring.metrics_host = parsed->first;
      topo_.monitoring.metrics_port = parsed->second;
    }
  }

  void read_control(const toml::table& root) {
    std::string address;
    read("control", section(root, "control"), "listen", address);
    if (address.empty()) return;
    auto parsed = read_address("control.listen", address);
    if (!parsed) return;
    auto& [host, port] = *parsed;
    if (host == "localhost") host = "127.0.0.1";
    // The endpoint changes a running job: only this machine may reach it.
    const bool loopback = host == "::1" || host.rfind("127.", 0) == 0;
    if (!loopback) {
      error(topo_.where("control.listen"),
            fmt::format("control.listen = \"{}\": the control endpoint listens on a loopback "
                        "address only (127.0.0.1, ::1 or localhost); reach it from elsewhere "
                        "through ssh",
                        address));
      return;
    }
    topo_.control.host = host;
    topo_.control.port = port;
  }

  topology& topo_;
  std::vector<diagnostic>& diagnostics_;
  std::string file_;
  bool model_read_ = false;  ///< [model] was read without error: its counts bound indices
};

}  // namespace

loaded_topology load_topology_text(std::string_view text, const fs::path& file,
                                   const topology_load_options& options) {
  loaded_topology result;
  topology& topo = result.topo;
  topo.file = file;
  std::vector<diagnostic> diagnostics;
  toml::table root;
  try {
    root = toml::parse(text, file.string());
  } catch (const toml::parse_error& e) {
    throw topology_error({{{file.string(), static_cast<int>(e.source().begin.line),
                            static_cast<int>(e.source().begin.column)},
                           diagnostic::severity::error,
                           fmt::format("not valid TOML: {}", e.description())}});
  }
  apply_overrides(root, options.overrides);
  topology_parser(topo, diagnostics).parse(root);
  bool has_errors = false;
  for (const auto& d : diagnostics)
    has_errors = has_errors || d.level == diagnostic::severity::error;
  // Meaning is only checked once the file has the right shape; otherwise the errors multiply.
  if (!has_errors) detail::validate_topology(topo, options, diagnostics);
  std::vector<diagnostic> errors;
  for (auto& d : diagnostics)
    (d.level == diagnostic::severity::error ? errors : result.warnings).push_back(std::move(d));
  if (!errors.empty()) throw topology_error(std::move(errors));
  return result;
}

loaded_topology load_topology(const fs::path& file, const topology_load_options& options) {
  // A topology is a few kilobytes; 16 MiB leaves room for generated ones.
  return load_topology_text(read_text_file(file, "topology file", std::uintmax_t{16} << 20), file,
                            options);
}

std::optional<std::pair<std::string, int>> parse_listen_address(std::string_view address) {
  const auto colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  const std::string_view digits = address.substr(colon + 1);
  if (digits.empty() || digits.size() > 5 ||
      digits.find_first_not_of("0123456789") != std::string_view::npos)
    return std::nullopt;
  const int port = std::stoi(std::string(digits));
  if (port > 65535) return std::nullopt;
  std::string host(address.substr(0, colon));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  return std::make_pair(host, port);
}

}  // namespace troupe
