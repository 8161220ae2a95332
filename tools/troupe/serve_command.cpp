// `troupe serve`: an OpenAI-compatible HTTP server over a Hugging Face DeepSeek-V3 directory or
// a troupe checkpoint (runtime/serve/openai_server.hpp): completions and chat completions,
// streamed or not, continuously batched over MLA's paged latent cache; /v1/models, /health and
// /metrics. Settings come from the topology's [serve] and [inference] sections and the options
// (which win). SIGTERM or SIGINT drains: no new requests, those running finish (for up to
// drain_seconds), then the process exits 0.
#include <pthread.h>

#include <algorithm>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>
#include <tuple>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <prometheus/registry.h>

#include "runtime/control/control_server.hpp"
#include "runtime/control/job_directory.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/experts/replicated_experts.hpp"
#include "runtime/inference/cached_model.hpp"
#include "runtime/inference/latent_cache.hpp"
#include "runtime/metrics/metrics.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/serve/disaggregated_engine.hpp"
#include "runtime/serve/openai_server.hpp"
#include "runtime/serve/remote_decode.hpp"
#include "runtime/serve/serving_engine.hpp"
#include "runtime/topology/load.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/model_input.hpp"
#include "tools/troupe/serve_experts.hpp"
#include "tools/troupe/serve_instance.hpp"
#include "tools/troupe/serve_processes.hpp"

namespace troupe::cli {

namespace {

namespace fs = std::filesystem;

struct serve_options {
  std::string topology, model, tokenizer, listen, model_name, api_key_file, cache_dtype;
  std::string control, job;
  std::vector<std::string> overrides;  ///< --set KEY=VALUE on the topology
  std::string device, prefill_device, decode_device, speculative;
  std::optional<std::int64_t> max_batch, max_queue, prefill_chunk, context_length, kv_cache_mib;
  std::optional<std::int64_t> prefill_instances, decode_instances;
  std::optional<std::int64_t> expert_shards, redundant_experts;
  std::optional<double> rebalance_interval;
  int threads = 0;
};

/// The topology's sections with the options laid over them.
struct serve_settings {
  serve_spec serve;
  inference_spec inference;
  std::string first_host;      ///< [serve] prefill_host (HTTP and prefill across processes)
  monitoring_spec monitoring;  ///< where a decode process serves its own metrics
  control_spec control;        ///< the control endpoint (`troupe ctl`); no host: none
};

serve_settings settings_of(const serve_options& o) {
  serve_settings s;
  if (o.topology.empty() && !o.overrides.empty())
    fail("--set {}: there is no topology to override; give one (troupe serve TOPOLOGY ...)",
         o.overrides.front());
  if (!o.topology.empty()) {
    topology_load_options load;
    load.resolve_plugins = false;
    load.overrides = o.overrides;
    const topology topo = load_topology(o.topology, load).topo;
    s.serve = topo.serve;
    s.inference = topo.inference;
    s.first_host = topo.serve.prefill_host;  // the first host unless [serve] prefill_host
    s.monitoring = topo.monitoring;
    s.control = topo.control;
  }
  if (!o.control.empty()) {
    auto address = parse_listen_address(o.control);
    if (address && address->first == "localhost") address->first = "127.0.0.1";
    if (!address || !(address->first == "::1" || address->first.starts_with("127.")))
      fail(
          "--control {}: give a loopback HOST:PORT (127.0.0.1, ::1 or localhost; port 0 picks a "
          "free one): the control endpoint changes a running server, only this machine may reach "
          "it",
          o.control);
    std::tie(s.control.host, s.control.port) = *address;
  }
  if (!o.listen.empty()) {
    const auto address = parse_listen_address(o.listen);
    if (!address)
      fail("--listen {}: give HOST:PORT with a port from 0 to 65535 (0 picks a free port)",
           o.listen);
    std::tie(s.serve.host, s.serve.port) = *address;
  }
  if (!o.model_name.empty()) s.serve.model_name = o.model_name;
  if (!o.device.empty()) s.serve.device = o.device;
  if (!o.prefill_device.empty()) s.serve.prefill_device = o.prefill_device;
  if (!o.decode_device.empty()) s.serve.decode_device = o.decode_device;
  if (!o.api_key_file.empty()) s.serve.api_key_file = o.api_key_file;
  if (!o.cache_dtype.empty()) s.inference.kv_cache_dtype = o.cache_dtype;
  if (o.max_batch) s.serve.max_batch = *o.max_batch;
  if (o.max_queue) s.serve.max_queue = *o.max_queue;
  if (o.prefill_chunk) s.serve.prefill_chunk = *o.prefill_chunk;
  if (o.context_length) s.serve.context_length = *o.context_length;
  if (o.kv_cache_mib) s.inference.kv_cache_mib = *o.kv_cache_mib;
  if (o.prefill_instances) s.serve.prefill_instances = *o.prefill_instances;
  if (o.decode_instances) s.serve.decode_instances = *o.decode_instances;
  if (!s.serve.decode_hosts.empty() && s.serve.decode_instances == 0)
    fail(
        "[serve] decode hosts {} with no decode instances (--decode-instances 0): give 1 or "
        "more, or a topology without decode_host(s)",
        fmt::join(s.serve.decode_hosts, ", "));
  if (o.expert_shards) s.serve.expert_shards = *o.expert_shards;
  if (o.redundant_experts) s.serve.redundant_experts = *o.redundant_experts;
  if (o.rebalance_interval) s.serve.rebalance_interval = *o.rebalance_interval;
  if (s.serve.expert_shards == 0 && s.serve.redundant_experts > 0)
    fail(
        "{} redundant experts without expert shards: redundant copies live on expert shards; give "
        "expert_shards (--expert-shards) too",
        s.serve.redundant_experts);
  if (!s.serve.expert_hosts.empty() &&
      s.serve.expert_shards < static_cast<std::int64_t>(s.serve.expert_hosts.size()))
    fail(
        "[serve] expert hosts {} with {} expert shards per instance (--expert-shards): each host "
        "needs at least one",
        fmt::join(s.serve.expert_hosts, ", "), s.serve.expert_shards);
  if (s.serve.decode_instances == 0 &&
      !(s.serve.prefill_device.empty() && s.serve.decode_device.empty()))
    fail(
        "[serve] prefill_device or decode_device (--prefill-device, --decode-device) without "
        "decode instances: prefill and decode share one instance on device (--device); give "
        "decode_instances (--decode-instances) too");
  if (s.serve.decode_instances == 0 && s.serve.prefill_instances != 1)
    fail(
        "{} prefill instances without decode instances: prefill instances only read prompts; "
        "give decode_instances (--decode-instances) too",
        s.serve.prefill_instances);
  return s;
}

/// The API key: the first line of its file, which must not be empty.
std::string read_api_key(const fs::path& file) {
  std::ifstream in(file);
  if (!in) fail("api_key_file {}: cannot be read", file.string());
  std::string key;
  std::getline(in, key);
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ' || key.back() == '\t'))
    key.pop_back();
  if (key.empty()) fail("api_key_file {}: its first line (the key) is empty", file.string());
  return key;
}

/// The name requests give in "model": the option or [serve] model_name, else the directory's.
std::string served_name(const std::string& chosen, const std::string& model) {
  if (!chosen.empty()) return chosen;
  fs::path path = fs::absolute(model).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  return path.filename().string();
}

/// The decode process of a server whose decode instances run on their own host: adopts what
/// the serving process sends until it says to leave.
int decode_only(serve_processes& processes, std::vector<std::unique_ptr<model_instance>>& loaded,
                const disaggregated_options& options, const monitoring_spec& monitoring) {
  // Its own series (tokens decoded, drafts, its cache, its experts' load) at the topology's
  // [monitoring] metrics address: the serving process's /metrics does not have them.
  std::unique_ptr<metrics_endpoint> endpoint;
  if (!monitoring.metrics_host.empty()) {
    endpoint = std::make_unique<metrics_endpoint>(monitoring.metrics_host, monitoring.metrics_port,
                                                  *options.metrics);
    fmt::print(stderr, "troupe serve: decode process metrics at {}\n", endpoint->url());
  }
  std::vector<serving_instance> decode;
  std::vector<controlled_instance> controlled;
  for (auto& instance : loaded) {
    decode.push_back(instance->view());
    controlled.push_back(instance->control_view());
  }
  auto engine =
      std::make_shared<disaggregated_engine>(std::vector<serving_instance>{}, decode, options);
  // The server's plugin swaps and re-placements reach these instances through the decode actor.
  auto swap = std::make_shared<serving_swap>(*engine, controlled);
  auto rebalance = std::make_shared<serving_rebalance>(*engine, std::move(controlled));
  processes.job().expose("decode",
                         spawn_decode_actor(processes.runtime(), engine, swap, rebalance));
  // The hand-offs name the serving process's front actor for this rank: it must be known here.
  const int rank = processes.rank();
  processes.job().remote(serve_processes::front_name(rank), 0);
  processes.job().barrier(std::chrono::minutes(10));
  fmt::print(stderr, "troupe serve: decode process ({}): {} decode instances ready\n",
             processes.job().host_of(rank), decode.size());
  const auto [code, why] = processes.job().wait_for_finish();
  fmt::print(stderr, "troupe serve: decode process: {}\n", why);
  return code;
}

int serve(const serve_options& o) {
  // Everything that can be checked is checked before the weights are read.
  const serve_settings settings = settings_of(o);
  const serve_spec& spec = settings.serve;
  const std::string api_key = spec.api_key_file.empty() ? "" : read_api_key(spec.api_key_file);
  const auto checkpoint = hf_checkpoint::open(o.model);
  const model_config& config = checkpoint.config();
  const bool mtp = o.speculative == "mtp";
  if (mtp) require_mtp(checkpoint, o.model, "--speculative mtp");
  // Each role's device: the colocated instance's, the prefill and the decode instances'.
  const device where = parse_device(spec.device);
  const device prefill_where =
      spec.prefill_device.empty() ? where : parse_device(spec.prefill_device);
  const device decode_where = spec.decode_device.empty() ? where : parse_device(spec.decode_device);
  const auto where_of = [&](const std::string& engine) {
    return engine.starts_with("prefill")  ? prefill_where
           : engine.starts_with("decode") ? decode_where
                                          : where;
  };
  // The roles in use (colocated, or prefill and decode); each process checks its own devices
  // once it knows its rank (below): a decode host need not have the prefill host's GPUs.
  const bool disaggregated = spec.decode_instances > 0;
  const bool any_cuda =
      disaggregated ? prefill_where.is_cuda() || decode_where.is_cuda() : where.is_cuda();
  const bool several_processes = !spec.decode_hosts.empty() || !spec.expert_hosts.empty();
  const auto require_devices = [&](int rank) {
    for (const std::string& engine : engines_of_rank(spec, rank))
      if (const device d = where_of(engine); d.is_cuda()) cuda::require_device(d.index);
  };
  if (!several_processes) require_devices(0);
  if (spec.decode_hosts.size() > 1 && settings.monitoring.metrics_port != 0 &&
      !settings.monitoring.metrics_host.empty() && !serve_processes::under_launcher())
    fail(
        "[monitoring] metrics = \"{}:{}\": the {} decode processes started on this machine would "
        "each serve their metrics there; give port 0 (each picks a free one and prints it)",
        settings.monitoring.metrics_host, settings.monitoring.metrics_port,
        spec.decode_hosts.size());
  if (spec.expert_shards > 0) {
    if (any_cuda)
      fail(
          "[serve] expert_shards = {}: expert shards compute on the CPU; on a GPU the moe plugin "
          "computes whole layers (expert_shards = 0)",
          spec.expert_shards);
    if (config.n_routed_experts == 0)
      fail("[serve] expert_shards = {}: {} has no routed experts", spec.expert_shards, o.model);
    const std::int64_t slots = config.n_routed_experts + spec.redundant_experts;
    if (slots % spec.expert_shards != 0 || slots < spec.expert_shards)
      fail(
          "[serve] expert_shards = {}: the {} routed experts and {} redundant copies ({} slots per "
          "layer) do not split evenly over the shards",
          spec.expert_shards, config.n_routed_experts, spec.redundant_experts, slots);
  }

  const std::string& cache_type = settings.inference.kv_cache_dtype;
  const latent_cache_shape shape = inference_cache_shape(
      config, mtp ? config.num_nextn_predict_layers : 0,
      cache_type == "bf16" ? dtype::bf16 : dtype::f32, settings.inference.block_tokens);
  const std::uint64_t budget = static_cast<std::uint64_t>(settings.inference.kv_cache_mib) << 20;
  const auto holds =
      static_cast<std::int64_t>(budget / static_cast<std::uint64_t>(shape.bytes_per_block())) *
      shape.block_tokens;
  // One request alone must always fit: its context, and a draft token past it.
  const std::int64_t fits = holds - (mtp ? 2 : 1);
  const std::int64_t context = spec.context_length > 0
                                   ? spec.context_length
                                   : std::min<std::int64_t>(config.max_position_embeddings, fits);
  if (context < 1 || context > fits)
    fail(
        "the KV cache of {} MiB holds {} tokens (blocks of {}, {} bytes per token in {}), too "
        "few for a context of {} tokens: raise [inference] kv_cache_mib (--kv-cache-mib) or "
        "lower [serve] context_length (--context-length)",
        settings.inference.kv_cache_mib, holds, shape.block_tokens, shape.bytes_per_token(),
        cache_type, context);

  const std::optional<text_codec> codec = open_text_codec(o.model, o.tokenizer, config);
  if (!codec)
    fail(
        "{} has no tokenizer.json and is no troupe checkpoint: give --tokenizer PATH (a "
        "tokenizer.json or its directory, or bytes)",
        o.model);

  // With [serve] decode_host(s) the job has a process per decode host besides this one (HTTP and
  // prefill, rank 0); they meet before any reads the weights.
  auto metrics_holder = std::make_shared<metrics_registry>();
  metrics_registry& metrics = *metrics_holder;
  serving_metrics serve_metrics(*metrics.registry());
  // NOTES: the models outlive the processes' actors (declared first, destroyed last): the decode
  // actor holds the decode engine, whose threads use the models until the runtime is gone.
  std::vector<std::unique_ptr<model_instance>> loaded;
  std::unique_ptr<serving_expert_shards> expert_shards;  // an expert process's
  std::unique_ptr<serve_processes> processes;
  if (!spec.decode_hosts.empty() || !spec.expert_hosts.empty())
    processes = std::make_unique<serve_processes>(settings.first_host, spec.decode_hosts,
                                                  spec.expert_hosts, metrics_holder);
  const bool decode_process = processes && processes->rank() > 0;
  // The control endpoint's name is claimed before the weights are read: a --job name in use, or
  // a run directory that is not private, fails now.
  std::unique_ptr<job_directory> directory;
  if (!decode_process && !settings.control.host.empty())
    directory = std::make_unique<job_directory>(
        default_run_directory(), o.job.empty() ? served_name(spec.model_name, o.model) : o.job,
        !o.job.empty());

  const int cores = o.threads > 0
                        ? o.threads
                        : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (processes && processes->is_expert_rank()) {
    expert_shards = std::make_unique<serving_expert_shards>(*processes, checkpoint, spec, cores);
    processes->job().barrier(std::chrono::minutes(10));
    fmt::print(stderr, "troupe serve: expert process ({}): {} expert shards ready\n",
               processes->job().host_of(processes->rank()), expert_shards->count());
    const auto [code, why] = processes->job().wait_for_finish();
    fmt::print(stderr, "troupe serve: expert process: {}\n", why);
    return code;
  }
  // An instance per colocated engine, or per prefill and decode instance of this process: each
  // its own weights, cache and worker pool, the threads split between them.
  const int own_rank = processes ? processes->rank() : 0;
  if (several_processes) require_devices(own_rank);
  const std::vector<std::string> engines = engines_of_rank(spec, own_rank);
  const auto instances = static_cast<std::int64_t>(engines.size());
  std::int64_t prefill_here = 0;
  for (const std::string& engine : engines) {
    if (engine.starts_with("prefill")) ++prefill_here;
    loaded.push_back(std::make_unique<model_instance>(
        checkpoint, mtp, where_of(engine), std::max(1, cores / static_cast<int>(instances)), shape,
        budget, spec, metrics.registry().get(), engine,
        spec.expert_hosts.empty() ? replicated_experts::shard_set_factory{}
                                  : remote_expert_shards(*processes, spec, own_rank, engine)));
  }
  disaggregated_options split_options;
  split_options.prefill_batch = spec.max_batch;
  split_options.decode_batch = spec.max_batch;
  split_options.max_queue = spec.max_queue;
  split_options.prefill_chunk = spec.prefill_chunk;
  split_options.metrics = &metrics;
  split_options.serve_metrics = &serve_metrics;
  if (decode_process) return decode_only(*processes, loaded, split_options, settings.monitoring);

  auto lost_log = std::make_shared<lost_decode_processes>();  // what status reports
  // The remote decoders outlive the engine, whose threads send through them.
  std::vector<std::unique_ptr<actor_remote_decoder>> remotes;
  std::unique_ptr<request_engine> engine;
  std::shared_ptr<void> disconnect_first;  // destroyed before the engine
  if (spec.decode_instances > 0) {
    std::vector<serving_instance> prefill, decode;
    for (std::int64_t i = 0; i < instances; ++i)
      (i < prefill_here ? prefill : decode).push_back(loaded[static_cast<std::size_t>(i)]->view());
    if (processes && processes->decode_processes() > 0) {
      // Remote decoder r is decode rank r + 1's decode actor.
      std::vector<remote_decoder*> links;
      for (int rank = 1; rank <= processes->decode_processes(); ++rank) {
        remotes.push_back(std::make_unique<actor_remote_decoder>(
            processes->runtime(), processes->job().remote("decode", rank)));
        links.push_back(remotes.back().get());
      }
      auto split = std::make_unique<disaggregated_engine>(prefill, decode, split_options, links);
      std::vector<std::function<void(const std::string&)>> lost;
      for (std::size_t r = 0; r < remotes.size(); ++r) {
        remotes[r]->connect(*split, r);
        processes->job().expose(serve_processes::front_name(static_cast<int>(r) + 1),
                                remotes[r]->front());
        lost.push_back(remotes[r]->on_lost());
      }
      // Whatever ends serve() (a failed barrier, a port in use), the front actors and the
      // failure handler stop reaching the engine before it goes.
      disconnect_first = std::shared_ptr<void>(nullptr, [&remotes](void*) {
        for (auto& link : remotes) link->disconnect();
      });
      processes->job().on_failure([lost, lost_log](int rank, const std::string& why) {
        if (rank < 1 || rank > static_cast<int>(lost.size())) return;  // an expert process
        if (lost_log->leaving()) return;                               // it leaves as told
        fmt::print(stderr, "troupe serve: decode process lost: {}\n", why);
        lost_log->add(rank, why);
        lost[static_cast<std::size_t>(rank - 1)](why);
      });
      engine = std::move(split);
    } else {
      engine = std::make_unique<disaggregated_engine>(prefill, decode, split_options);
    }
  } else {
    serving_options engine_options;
    engine_options.max_batch = spec.max_batch;
    engine_options.max_queue = spec.max_queue;
    engine_options.prefill_chunk = spec.prefill_chunk;
    engine_options.metrics = &metrics;
    engine_options.serve_metrics = &serve_metrics;
    model_instance& only = *loaded.front();
    engine_options.after_step = only.view().after_step;
    engine = std::make_unique<serving_engine>(only.cached, only.cache, only.exec, engine_options);
  }

  if (processes) {
    processes->job().on_failure(
        [lost_log, decode = processes->decode_processes()](int rank, const std::string& why) {
          if (rank <= decode || lost_log->leaving()) return;  // decode: the handler above
          fmt::print(stderr, "troupe serve: expert process lost: {}\n", why);
          lost_log->add(rank, why);
        });
    processes->job().barrier(std::chrono::minutes(10));
  }

  openai_model model;
  model.name = served_name(spec.model_name, o.model);
  model.encode = [codec = *codec](std::string_view text) {
    std::vector<std::int32_t> ids;
    // The byte tokenizer has no text for BOS: it goes in as an id.
    if (!codec.chat_tokens && codec.add_bos && codec.bos) ids.push_back(*codec.bos);
    codec.encode(text, ids);
    return ids;
  };
  model.decode = codec->decode;
  if (codec->chat_tokens && codec->bos && codec->eos) {
    model.bos_text = codec->decode({*codec->bos});
    model.eos_text = codec->decode({*codec->eos});
  }
  model.eos = codec->eos ? *codec->eos : static_cast<std::int32_t>(config.eos_token_id);
  model.context_length = context;
  model.max_tokens_limit = context;
  model.drawable_vocab = codec->vocab_size;
  model.vocab_size = config.vocab_size;
  model.created = std::time(nullptr);
  model.speculative_mtp = mtp;

  openai_server_options server_options;
  server_options.host = spec.host;
  server_options.port = spec.port;
  server_options.api_key = api_key;
  // A handler thread per request in the batch or the queue, and some for /health and /metrics:
  // past the queue a request gets 429 from the engine, not 503 from the server.
  server_options.limits.max_handlers =
      static_cast<std::size_t>(spec.max_batch + spec.max_queue + 16);
  server_options.limits.max_connections = server_options.limits.max_handlers + 64;
  server_options.limits.body_limit = 16u << 20;
  openai_server server(*engine, model, metrics, serve_metrics, server_options);

  // `troupe ctl NAME ...`: status, plugin swaps and expert re-placements of this process's
  // instances (serving_control.hpp), with the topology's [control] or --control.
  std::unique_ptr<serving_control> control;
  std::unique_ptr<control_server> control_endpoint;
  if (directory) {
    std::vector<controlled_instance> controlled;
    for (auto& instance : loaded) controlled.push_back(instance->control_view());
    serving_control_options control_options;
    control_options.job = directory->name();
    control_options.model = model.name;
    control_options.url = server.url();
    control_options.topology = o.topology;
    control_options.decode_hosts = spec.decode_hosts;
    control_options.expert_hosts = spec.expert_hosts;
    if (processes) {
      control_options.lost = lost_log;
      control_options.runtime = &processes->runtime();
      for (int rank = 1; rank <= processes->decode_processes(); ++rank)
        control_options.decode_actors.push_back(processes->job().remote("decode", rank));
    }
    control_options.experts = config.n_routed_experts;
    control = std::make_unique<serving_control>(*engine, std::move(controlled), control_options);
    control_endpoint = std::make_unique<control_server>(
        settings.control.host, settings.control.port, directory->token(), control->commands(),
        *metrics.registry(),
        [](const std::string& line) { fmt::print(stderr, "troupe serve: {}\n", line); });
    directory->publish(control_endpoint->url(), o.topology);
    fmt::print(stderr, "troupe serve: control {} (troupe ctl {} status; token in {})\n",
               control_endpoint->url(), directory->name(), directory->token_file().string());
  }
  fmt::print(
      "troupe serve: serving {} at {} (POST /v1/completions, /v1/chat/completions; GET "
      "/v1/models, /health, /metrics): {} layers on {}, batch {}, queue {}, context {} tokens, KV "
      "cache {} MiB ({} tokens, {}){}{}\n",
      model.name, server.url(), config.num_hidden_layers,
      spec.decode_instances > 0 && !(prefill_where == decode_where)
          ? fmt::format("{} (prefill) and {} (decode)", to_string(prefill_where),
                        to_string(decode_where))
          : to_string(spec.decode_instances > 0 ? decode_where : where),
      spec.max_batch, spec.max_queue, context, settings.inference.kv_cache_mib, holds, cache_type,
      mtp ? ", MTP speculative" : "",
      spec.decode_instances > 0
          ? fmt::format(", disaggregated: {} prefill and {} decode instances (each its own "
                        "weights and cache)",
                        spec.prefill_instances, spec.decode_instances)
          : std::string());
  std::fflush(stdout);

  // The signals were blocked before any thread started (add_serve_command's callback).
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  int signal = 0;
  sigwait(&stop, &signal);
  fmt::print(stderr, "troupe serve: {}: draining (no new requests; up to {} s for those running)\n",
             strsignal(signal), spec.drain_seconds);
  if (control) control->set_draining();
  const bool drained = server.drain(std::chrono::seconds(spec.drain_seconds));
  fmt::print(stderr, "troupe serve: {}\n",
             drained ? "every request finished; stopping"
                     : "requests still running after drain_seconds were cancelled; stopping");
  disconnect_first.reset();
  lost_log->set_leaving();
  if (processes) processes->finish(0, "the server stopped");
  return exit_ok;
}

}  // namespace

void add_serve_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<serve_options>();
  auto* command = app.add_subcommand(
      "serve",
      "Serve a model over HTTP with OpenAI's API (completions and chat, streamed or not), "
      "continuously batched; SIGTERM drains and exits");
  command
      ->add_option("topology", o->topology,
                   "A topology whose [serve] and [inference] sections set the server and the "
                   "KV cache (optional)")
      ->check(CLI::ExistingFile);
  command->add_option("--model", o->model, "Model directory (config.json and *.safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  command->add_option("--listen", o->listen,
                      "HOST:PORT to serve on (default 127.0.0.1:8000; port 0 picks a free one)");
  command->add_option("--tokenizer", o->tokenizer,
                      "tokenizer.json or its directory, or bytes; default: the model's");
  command->add_option("--model-name", o->model_name,
                      "The name requests give in \"model\" (default: the directory's name)");
  command
      ->add_option("--api-key-file", o->api_key_file,
                   "A file whose first line is the key /v1/ requests must bear")
      ->check(CLI::ExistingFile);
  command->add_option("--max-batch", o->max_batch, "Sequences decoded together (default 32)")
      ->check(within({1, 4096}));
  command->add_option("--max-queue", o->max_queue, "Requests waiting to join (default 256)")
      ->check(within({0, 1 << 20}));
  command
      ->add_option("--prefill-chunk", o->prefill_chunk,
                   "Prompt tokens a sequence reads per step (default 512; 0: whole prompts)")
      ->check(within({0, 1 << 24}));
  command
      ->add_option("--context-length", o->context_length,
                   "Prompt + completion tokens per request (default: the model's, within the "
                   "cache)")
      ->check(within({1, 1 << 30}));
  command->add_option("--kv-cache-mib", o->kv_cache_mib, "The KV cache's memory (default 1024)")
      ->check(within({1, 1 << 30}));
  command
      ->add_option("--prefill-instances", o->prefill_instances,
                   "With --decode-instances: instances that only read prompts (default 1)")
      ->check(within({1, 64}));
  command
      ->add_option("--decode-instances", o->decode_instances,
                   "Disaggregated serving: instances that decode what the prefill instances "
                   "hand them (default 0: prefill and decode in one batch)")
      ->check(within({0, 64}));
  command
      ->add_option("--expert-shards", o->expert_shards,
                   "Each instance's routed experts on this many expert shards, placed by EPLB "
                   "(default 0: whole MoE layers)")
      ->check(within({0, 4096}));
  command
      ->add_option("--redundant-experts", o->redundant_experts,
                   "With --expert-shards: extra expert copies per MoE layer for the heaviest "
                   "experts (default 0)")
      ->check(within({0, 1 << 16}));
  command
      ->add_option("--rebalance-interval", o->rebalance_interval,
                   "With --expert-shards: seconds between re-placements from the observed load "
                   "(default 600; 0: never)")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--cache-dtype", o->cache_dtype, "bf16 (default) or f32")
      ->check(CLI::IsMember({"f32", "bf16"}));
  command
      ->add_option("--speculative", o->speculative,
                   "mtp: every request decodes speculatively with the MTP module's drafts")
      ->check(CLI::IsMember({"mtp"}));
  command->add_option("--device", o->device,
                      "cpu or cuda:N (default: the topology's [serve] device, else cpu)");
  command->add_option("--prefill-device", o->prefill_device,
                      "With --decode-instances: the prefill instances' device (default: --device)");
  command->add_option("--decode-device", o->decode_device,
                      "With --decode-instances: the decode instances' device (default: --device)");
  command->add_option(
      "--control", o->control,
      "Serve a control endpoint for `troupe ctl` on this loopback HOST:PORT (port 0: a free one; "
      "default: the topology's [control] listen, else none)");
  command->add_option("--job", o->job,
                      "The name `troupe ctl` knows the server by (default: the model's name)");
  command
      ->add_option("--set", o->overrides,
                   "Override a key of the topology, KEY=VALUE (e.g. serve.max_batch=8); "
                   "repeatable")
      ->allow_extra_args(false);
  command->add_option("--threads", o->threads, "Worker threads (default: one per core)")
      ->check(within(thread_bounds));
  command->callback([o, &exit_code] {
    // NOTES: blocked here, before the server's threads start, so that every thread inherits the
    // mask and only serve()'s sigwait takes SIGTERM and SIGINT.
    sigset_t stop, previous;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, &previous);
    try {
      exit_code = serve(*o);
    } catch (const std::exception& e) {
      std::fflush(stdout);
      fmt::print(stderr, "troupe serve: {}\n", e.what());
      exit_code = exit_bad_input;
    }
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  });
}

}  // namespace troupe::cli
