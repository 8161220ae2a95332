#include "runtime/train/training_job.hpp"

#include <chrono>
#include <cmath>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <thread>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/actor_runtime.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/message_fence.hpp"
#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/checkpoint/safetensors.hpp"
#include "runtime/core/error.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/exec/thread_pool.hpp"
#include "runtime/optim/training_schedule.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/topology/plan.hpp"
#include "runtime/train/actor_expert_transport.hpp"
#include "runtime/train/train_checkpoint.hpp"
#include "runtime/train/train_messages.hpp"
#include "runtime/train/train_wire.hpp"
#include "runtime/train/training_actors.hpp"
#include "runtime/train/training_job_impl.hpp"
#include "runtime/train/training_metrics.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::shared_ptr<const plugin_library> load_role(plugin_registry& registry, const topology& topo,
                                                plugin_kind role, const std::string& fallback) {
  const plugin_choice* choice = topo.plugin_for(role);
  const std::string reference =
      choice == nullptr ? fallback
                        : (choice->resolved ? choice->resolved->string() : choice->reference);
  plugin_load_options options;
  options.expected_kind = role;
  return registry.load(reference, options);
}

std::string options_of(const topology& topo, plugin_kind role) {
  const plugin_choice* choice = topo.plugin_for(role);
  return choice == nullptr ? "{}" : choice->options_json;
}

/// The MoE layers of the model, MTP blocks included.
std::vector<std::int64_t> moe_layers(const model_config& c) {
  std::vector<std::int64_t> layers;
  for (std::int64_t l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; ++l)
    if (c.n_routed_experts > 0 && l >= c.first_k_dense_replace) layers.push_back(l);
  return layers;
}

}  // namespace

void training_job::impl::build_data() {
  const train_spec& tr = topo.train;
  const model_config& config = topo.model;
  data_state = std::make_shared<data_actor_setup>();
  data_state->corpus = std::make_unique<text_corpus>(text_corpus::load(topo.data_source.corpus));
  data_state->tokenizer = std::make_unique<byte_tokenizer>(config);
  data_state->stream = std::make_unique<token_stream>(*data_state->corpus, *data_state->tokenizer,
                                                      topo.data_source.fim_rate,
                                                      static_cast<std::uint64_t>(tr.seed));
  data_state->micro_batch_size = tr.micro_batch_size;
  data_state->sequence_length = tr.sequence_length;
}

void training_job::impl::build(plugin_registry& registry) {
  const model_config& config = topo.model;
  const train_spec& tr = topo.train;
  plugin_loader = &registry;
  total_steps = tr.steps;
  checkpoint_root =
      options.checkpoint_dir.empty() ? fs::path(tr.checkpoint_dir) : options.checkpoint_dir;
  lr = {tr.learning_rate, tr.min_learning_rate, tr.warmup_steps, tr.steps};
  const bool dualpipe = topo.schedule.kind == schedule_kind::dualpipe;
  ramp = {topo.schedule.micro_batches,
          tr.batch_ramp_steps > 0 ? tr.batch_ramp_start : topo.schedule.micro_batches,
          tr.batch_ramp_steps, dualpipe ? 2 : 1};

  metrics = options.metrics ? options.metrics : std::make_shared<metrics_registry>();
  actor_runtime_options runtime_options;
  // Message handling only; compute runs on the pool and the detached actors' threads.
  runtime_options.scheduler_threads = 2;
  runtime_options.network = options.cluster.has_value();
  runtime = std::make_unique<actor_runtime>(runtime_options, metrics);
  if (options.cluster) {
    // Meet the other processes before the slow part, so that the rendezvous timeout measures
    // the processes' start, not the model's.
    cluster_options placement = *options.cluster;
    placement.hosts.clear();
    for (const auto& process : plan_topology(topo).processes) {
      placement.hosts.push_back(process.host);
      for (const auto& actor : process.actors) rank_of[actor] = process.rank;
    }
    processes = std::make_unique<cluster>(*runtime, placement, training_codec());
  }

  // The data first: a corpus or tokenizer that does not fit fails before the model is built.
  if (is_local("data")) build_data();

  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  pool = std::make_unique<thread_pool>(threads);
  active[plugin_kind::gemm] = nullptr;
  std::unique_ptr<gemm_instance> gemm;
  if (topo.gemm_precision == precision::fp8) {
    active[plugin_kind::gemm] = load_role(registry, topo, plugin_kind::gemm, "fp8");
    gemm = std::make_unique<gemm_instance>(active[plugin_kind::gemm], instance_options{});
  }
  context = std::make_unique<exec_context>(device::cpu(), *pool, gemm ? gemm->provider() : nullptr);
  plugins_here = std::make_shared<process_plugins>(registry, *context, std::move(gemm));

  plugins.attention = load_role(registry, topo, plugin_kind::attention, "mla");
  plugins.attention_options = options_of(topo, plugin_kind::attention);
  if (config.n_routed_experts > 0) {
    plugins.moe = load_role(registry, topo, plugin_kind::moe, "moe");
    nlohmann::json moe_options = nlohmann::json::parse(options_of(topo, plugin_kind::moe));
    moe_options["balance_loss_alpha"] = tr.balance_loss_alpha;
    plugins.moe_options = moe_options.dump();
  }
  if (config.num_nextn_predict_layers > 0)
    plugins.mtp = load_role(registry, topo, plugin_kind::mtp, "mtp");
  active[plugin_kind::attention] = plugins.attention;
  if (plugins.moe) active[plugin_kind::moe] = plugins.moe;
  if (plugins.mtp) active[plugin_kind::mtp] = plugins.mtp;

  train_metrics =
      std::make_unique<training_metrics>(*metrics->registry(), topo.monitoring.per_expert_series);

  // The EMA updater and the expert shards first: the ranks need their handles.
  if (topo.ema.enabled && is_local("ema")) {
    ema_state = std::make_shared<ema_actor_setup>();
    ema_state->tracker = std::make_unique<ema_tracker>(topo.ema.decay);
    ema_state->config = config;
  }
  const std::int32_t copies = dualpipe ? 2 : 1;
  const std::int32_t sources = copies * topo.data;
  std::vector<std::vector<std::int64_t>> shard_experts;
  for (const auto& spec : topo.expert_shards)
    shard_experts.emplace_back(spec.experts.begin(), spec.experts.end());
  const bool sharded = !shard_experts.empty() && config.n_routed_experts > 0;
  if (sharded) {
    for (std::size_t i = 0; i < shard_experts.size(); ++i) {
      const std::string name = fmt::format("shard{}", i);
      if (!is_local(name)) {
        shards.push_back({name, caf::actor(), nullptr});
        continue;
      }
      auto setup = std::make_shared<shard_actor_setup>();
      setup->shard = std::make_unique<expert_shard>(config, plugins.moe, shard_experts[i], sources,
                                                    plugins.moe_options);
      setup->shard->parameters().initialize(static_cast<std::uint64_t>(tr.seed));
      setup->optimizer =
          std::make_unique<adamw>(adamw_settings{tr.beta1, tr.beta2, tr.epsilon, tr.weight_decay});
      setup->optimizer->attach(setup->shard->parameters());
      setup->context = context.get();
      setup->plugins = plugins_here;
      shards.push_back({name, caf::actor(), setup});
    }
  }

  // Pipeline ranks, replica by replica.
  const auto plan = plan_for(ramp.at(0));
  sharded_experts::options wire;
  if (topo.gemm_precision == precision::fp8) {
    wire.dispatch = wire_precision::fp8;
    wire.combine = wire_precision::bf16;
  }
  for (std::int32_t d = 0; d < topo.data; ++d)
    for (std::int32_t r = 0; r < topo.pipeline; ++r) {
      const std::string name =
          topo.data > 1 ? fmt::format("stage{}.r{}", r, d) : fmt::format("stage{}", r);
      // Ranks of other processes are built too, for the names of what they hold (who writes
      // what, which parameters are replicated), but never initialized or run here.
      const bool here = is_local(name);
      auto setup = std::make_shared<stage_actor_setup>();
      setup->plugins = plugins_here;
      // The shard handles come when the shards are spawned, after resume() loaded them.
      if (sharded) setup->transport = std::make_unique<actor_expert_transport>(runtime->system());
      std::vector<stage_chunk> chunks;
      for (auto [stage, copy] : plan->chunks(r)) {
        const auto& layers = topo.stages.at(static_cast<std::size_t>(stage)).layers;
        if (layers.empty()) fail("stage {} has no layers", stage);
        for (std::size_t i = 1; i < layers.size(); ++i)
          if (layers[i] != layers[i - 1] + 1)
            fail("stage {}: its layers must be consecutive to run as one slice", stage);
        stage_chunk chunk;
        chunk.stage = stage;
        chunk.copy = copy;
        model_plugins chunk_plugins = plugins;
        if (sharded) {
          auto options_for_copy = wire;
          options_for_copy.source = d * copies + copy;
          chunk.experts = std::make_unique<sharded_experts>(shard_experts, config.n_routed_experts,
                                                            *setup->transport, options_for_copy);
          chunk_plugins.experts = chunk.experts.get();
        }
        model_slice slice{layers.front(), layers.back() + 1, stage == 0,
                          stage == topo.pipeline - 1};
        chunk.runner = std::make_unique<model_runner>(config, slice, chunk_plugins,
                                                      model_options{tr.mtp_weight, true});
        if (here) {
          chunk.runner->parameters().initialize(static_cast<std::uint64_t>(tr.seed));
          chunk.optimizer = std::make_unique<adamw>(
              adamw_settings{tr.beta1, tr.beta2, tr.epsilon, tr.weight_decay});
          chunk.optimizer->attach(chunk.runner->parameters());
        }
        chunks.push_back(std::move(chunk));
      }
      setup->rank = std::make_unique<pipeline_rank>(r, std::move(chunks), *context);
      ranks.push_back({name, d, r, caf::actor(), setup});
    }

  // Who writes what: each checkpoint name once, by its first holder; parameters held more than
  // once are replicated (their gradients are summed by the coordinator).
  std::map<std::string, int> holders;
  std::set<std::string> claimed;
  for (auto& entry : ranks) {
    std::set<std::string> owned;
    for (auto& chunk : entry.setup->rank->chunks()) {
      for (const auto& [name, value] : chunk.runner->checkpoint_tensors())
        if (claimed.insert(name).second) owned.insert(name);
      for (parameter* p : chunk.runner->parameters().all())
        if (p->spec.trainable()) ++holders[p->name];
    }
    entry.setup->owned = std::move(owned);
  }
  std::set<std::string> replicated;
  for (const auto& [name, count] : holders)
    if (count > 1) replicated.insert(name);
  for (auto& entry : ranks) entry.setup->replicated = replicated;
  for (auto& entry : ranks)
    if (!is_local(entry.name)) entry.setup.reset();

  balancer_state = std::make_shared<bias_balancer>(
      balancer_settings{topo.balancer.gamma, topo.balancer.recenter}, moe_layers(config),
      config.n_routed_experts);

  if (!options.resume.empty()) resume();

  // Spawn (here, or a proxy for another process's): EMA, shards, ranks (with the shard
  // handles), balancer, data.
  if (topo.ema.enabled) ema = place("ema", [&] { return spawn_ema_actor(*runtime, ema_state); });
  std::vector<caf::actor> shard_actors;
  for (auto& s : shards) {
    s.actor = place(s.name, [&] {
      s.setup->ema = ema;
      return spawn_expert_shard_actor(*runtime, s.setup);
    });
    shard_actors.push_back(s.actor);
  }
  for (auto& entry : ranks)
    entry.actor = place(entry.name, [&] {
      entry.setup->ema = ema;
      if (entry.setup->transport) entry.setup->transport->set_shards(shard_actors);
      return spawn_stage_actor(*runtime, entry.setup);
    });
  for (std::int32_t d = 0; d < topo.data; ++d) {
    std::vector<caf::actor> peers;
    for (auto& entry : ranks)
      if (entry.replica == d) peers.push_back(entry.actor);
    for (auto& entry : ranks)
      if (entry.replica == d && entry.setup)
        caf::anon_send(entry.actor, atoms::peers_atom_v, peers);
  }
  balancer = place("balancer", [&] { return spawn_balancer_actor(*runtime, balancer_state); });
  data = place("data", [&] { return spawn_data_actor(*runtime, data_state); });

  if (processes) {
    // A stage waiting for another process's activations would wait forever when that process
    // dies: tell the local stages, which fail their step with the news.
    std::vector<caf::actor> local_stages;
    for (auto& entry : ranks)
      if (entry.setup) local_stages.push_back(entry.actor);
    processes->on_failure([local_stages, lost = lost](int, const std::string& why) {
      lost->store(true);
      for (const auto& stage : local_stages) caf::anon_send(stage, atoms::peer_down_atom_v, why);
    });
    // Nobody sends before every process has its actors up.
    processes->barrier(std::chrono::minutes(30));
  }

  if (coordinates() && !topo.monitoring.metrics_host.empty()) {
    endpoint = std::make_unique<metrics_endpoint>(topo.monitoring.metrics_host,
                                                  topo.monitoring.metrics_port, *metrics);
  }
  for (const auto& [role, library] : active) train_metrics->set_plugin(role, library.get());
  start_control();
}

void training_job::impl::resume() {
  const fs::path dir = resolve_checkpoint(options.resume);
  const trainer_state state = read_trainer_state(dir / "trainer_state.json");
  const hf_checkpoint weights = hf_checkpoint::open(dir);
  const auto moments = read_tensor_directory(dir / "optimizer");
  for (auto& entry : ranks)
    if (entry.setup) entry.setup->rank->load(weights, moments);
  for (auto& s : shards) {
    if (!s.setup) continue;
    s.setup->shard->parameters().load(weights);
    s.setup->optimizer->load_state(moments);
  }
  if (ema_state && fs::exists(dir / "ema")) {
    const hf_checkpoint averages = hf_checkpoint::open(dir / "ema");
    std::vector<std::pair<std::string, tensor>> values;
    for (const auto& name : averages.names()) values.emplace_back(name, averages.read_f32(name));
    ema_state->tracker->load(values);
  }
  balancer_state->set_biases(state.router_biases);
  if (data_state) data_state->stream->seek(state.data);
  position = state.data;
  start_step = state.step;
  tokens_seen = state.tokens_seen;
  if (start_step > total_steps)
    throw checkpoint_error(fmt::format("{}: the checkpoint is at step {}, past train.steps = {}",
                                       dir.string(), start_step, total_steps));
  event(fmt::format("resumed from {} at step {}", dir.string(), start_step));
}

fs::path training_job::impl::write_checkpoint(caf::blocking_actor* self, std::int64_t step,
                                              double loss) {
  fs::create_directories(checkpoint_root);
  const fs::path partial = checkpoint_root / (checkpoint_name(step) + ".partial");
  fs::remove_all(partial);
  fs::create_directories(partial / "optimizer");
  const std::size_t writers = ranks.size() + shards.size();
  std::map<std::string, std::string> weight_map;
  std::size_t index = 0;
  auto save = [&](const caf::actor& actor, const std::string& name) {
    checkpoint_order order{partial.string(),
                           fmt::format("model-{:05d}-of-{:05d}.safetensors", ++index, writers),
                           fmt::format("optimizer/{}.safetensors", name)};
    self->request(actor, caf::infinite, atoms::save_atom_v, order)
        .receive(
            [&](checkpoint_written& written) {
              observe_writes(self);
              for (auto& w : written.weights) weight_map[w] = order.weights_file;
            },
            [&](caf::error& e) { raise_failure(self, e, [&] { return "checkpoint: " + name; }); });
  };
  for (auto& entry : ranks) save(entry.actor, entry.name);
  for (auto& s : shards) save(s.actor, s.name);
  write_weight_index(partial, weight_map);
  {
    std::ofstream out(partial / "config.json");
    out << topo.model.json_text << "\n";
  }
  if (ema)
    self->request(ema, caf::infinite, atoms::save_atom_v, (partial / "ema").string())
        .receive([](bool) {},
                 [&](caf::error& e) {
                   raise_failure(self, e, [] { return std::string("checkpoint: ema"); });
                 });
  trainer_state state;
  state.step = step;
  state.total_steps = total_steps;
  state.seed = static_cast<std::uint64_t>(topo.train.seed);
  state.data = position;
  self->request(balancer, caf::infinite, atoms::biases_atom_v)
      .receive(
          [&](router_biases& biases) {
            observe_writes(self);
            state.router_biases = std::move(biases.values);
          },
          [&](caf::error& e) { raise_failure(self, e, [] { return std::string("balancer"); }); });
  state.tokens_seen = tokens_seen;
  state.loss = loss;
  state.topology = topo.file.string();
  write_trainer_state(partial / "trainer_state.json", state);
  const fs::path final_dir = publish_checkpoint(checkpoint_root, partial, step);
  event(fmt::format("checkpoint {}", final_dir.string()));
  last_written = final_dir;
  return final_dir;
}

}  // namespace troupe

namespace troupe {

training_result training_job::impl::coordinate(caf::blocking_actor* self,
                                               const std::atomic<bool>& stop) {
  training_result result;
  result.first_step = result.last_step = start_step;
  last_completed = start_step;
  const auto run_start = std::chrono::steady_clock::now();
  const train_spec& tr = topo.train;
  const bool has_ema = static_cast<bool>(ema);
  std::vector<caf::actor> holders;
  for (auto& entry : ranks) holders.push_back(entry.actor);
  last_loss = 0.0;
  bool stop_now = false;
  std::map<std::int64_t, std::vector<float>> biases;
  self->request(balancer, caf::infinite, atoms::biases_atom_v)
      .receive(
          [&](router_biases& initial) {
            observe_writes(self);
            biases = std::move(initial.values);
          },
          [&](caf::error& e) { raise_failure(self, e, [] { return std::string("balancer"); }); });

  for (std::int64_t step = start_step; step < total_steps; ++step) {
    at_step_boundary(self, stop);
    if (stop.load(std::memory_order_relaxed)) {
      stop_now = true;
      break;
    }
    const auto step_start = std::chrono::steady_clock::now();
    const std::int64_t per_replica = ramp.at(step);
    const std::int64_t micro_batches = per_replica * topo.data;
    const auto plan = plan_for(per_replica);

    // The global batch.
    data_batch batch;
    self->request(data, caf::infinite, atoms::batch_atom_v, micro_batches)
        .receive(
            [&](data_batch& b) {
              observe_writes(self);
              batch = std::move(b);
            },
            [&](caf::error& e) { raise_failure(self, e, [] { return std::string("data"); }); });

    // Forward and backward of every micro-batch, on every rank at once.
    const float loss_scale = 1.0f / static_cast<float>(micro_batches);
    using report_handle =
        decltype(self->request(holders[0], caf::infinite, atoms::run_step_atom_v, step_order{}));
    std::vector<report_handle> pending;
    for (auto& entry : ranks) {
      step_order order;
      order.step = step;
      order.plan = plan;
      order.loss_scale = loss_scale;
      const auto first = batch.inputs.begin() + entry.replica * per_replica;
      order.inputs.assign(first, first + per_replica);
      pending.push_back(
          self->request(entry.actor, caf::infinite, atoms::run_step_atom_v, std::move(order)));
    }
    std::vector<rank_step_report> reports(ranks.size());
    std::vector<double> walls(ranks.size());
    for (std::size_t i = 0; i < ranks.size(); ++i)
      pending[i].receive(
          [&](rank_step_report& report) {
            observe_writes(self);
            reports[i] = std::move(report);
            walls[i] = seconds_between(step_start, std::chrono::steady_clock::now());
          },
          [&](caf::error& e) {
            raise_failure(self, e,
                          [&] { return fmt::format("step {}: {}", step + 1, ranks[i].name); });
          });

    // Losses per micro-batch of the global batch (the head's; balance losses of every stage).
    std::vector<double> loss(static_cast<std::size_t>(micro_batches)), mtp(loss.size()),
        balance(loss.size());
    std::vector<std::string> non_finite(loss.size());
    expert_load load;
    for (std::size_t i = 0; i < ranks.size(); ++i) {
      for (const auto& l : reports[i].losses) {
        const auto m = static_cast<std::size_t>(ranks[i].replica * per_replica + l.micro_batch);
        if (l.head) {
          loss[m] = l.loss;
          mtp[m] = l.mtp_loss;
        }
        balance[m] += l.balance_loss;
        if (!l.non_finite.empty() && non_finite[m].empty())
          non_finite[m] = fmt::format("{} (stage {})", l.non_finite, ranks[i].rank);
      }
      for (const auto& [layer, counts] : reports[i].load) {
        auto& total = load[layer];
        total.resize(counts.size(), 0);
        for (std::size_t e = 0; e < counts.size(); ++e) total[e] += counts[e];
      }
    }
    step_record record;
    record.step = step + 1;
    record.total_steps = total_steps;
    record.micro_batches = micro_batches;
    for (std::size_t m = 0; m < loss.size(); ++m) {
      record.loss += loss[m] / static_cast<double>(micro_batches);
      record.mtp_loss += mtp[m] / static_cast<double>(micro_batches);
      record.balance_loss += balance[m] / static_cast<double>(micro_batches);
      const bool finite = std::isfinite(loss[m] + mtp[m] + balance[m]);
      if (!finite || !non_finite[m].empty()) {
        result.outcome = training_outcome::non_finite;
        result.message = fmt::format(
            "step {}, micro-batch {}: the loss is not finite; first non-finite value: {}", step + 1,
            m, non_finite[m].empty() ? "the loss itself" : non_finite[m]);
        break;
      }
    }
    if (result.outcome == training_outcome::non_finite) break;

    // Gradients: the norm of what each holder alone has, plus the replicated ones summed here
    // in holder order (deterministic), written back to every holder.
    double norm_squared = 0.0;
    std::string first_non_finite;
    std::map<std::string, std::vector<tensor>> replicated;
    std::vector<std::string> replicated_order;
    std::map<std::string, named_tensors> reported;  // by holder: what it sent, in its order
    ask_holders<gradient_report>(
        self, "gradients",
        [&](const std::string& name, gradient_report& report) {
          norm_squared += report.summary.norm_squared;
          if (first_non_finite.empty() && !report.summary.non_finite.empty())
            first_non_finite = fmt::format("{} (in {})", report.summary.non_finite, name);
          for (auto& [param, grad] : report.replicated.items) {
            auto& copies = replicated[param];
            if (copies.empty()) replicated_order.push_back(param);
            copies.push_back(grad);
          }
          if (!report.replicated.items.empty()) reported[name] = std::move(report.replicated);
        },
        atoms::gradients_atom_v);
    for (const auto& param : replicated_order) {
      auto& copies = replicated[param];
      float* sum = copies[0].data_as<float>();
      const std::int64_t n = copies[0].numel();
      for (std::size_t c = 1; c < copies.size(); ++c) {
        const float* g = copies[c].data_as<const float>();
        for (std::int64_t i = 0; i < n; ++i) sum[i] += g[i];
      }
      double squares = 0.0;
      for (std::int64_t i = 0; i < n; ++i)
        squares += static_cast<double>(sum[i]) * static_cast<double>(sum[i]);
      norm_squared += squares;
    }
    if (!first_non_finite.empty() || !std::isfinite(norm_squared)) {
      result.outcome = training_outcome::non_finite;
      result.message = fmt::format("step {}: the gradient of {} is not finite", step + 1,
                                   first_non_finite.empty() ? "the model" : first_non_finite);
      break;
    }
    // Every holder of a replicated parameter gets the sum (in one process the first copy is
    // already the sum: holders skip a copy onto itself).
    std::vector<std::pair<std::string, caf::actor>> reducing;
    for (const auto& [name, actor] : holder_actors()) {
      auto it = reported.find(name);
      if (it == reported.end()) continue;
      for (auto& [param, grad] : it->second.items) grad = replicated[param][0];
      reducing.emplace_back(name, actor);
    }
    ask_each<bool>(
        self, "gradient reduction", reducing, [](const std::string&, bool&) {},
        [&](const std::string& name) {
          return caf::make_message(atoms::reduced_atom_v, reported[name]);
        });
    const double grad_norm = std::sqrt(norm_squared);
    const double grad_scale =
        tr.grad_clip > 0.0 && grad_norm > tr.grad_clip ? tr.grad_clip / (grad_norm + 1e-6) : 1.0;

    // The same AdamW step on every holder; EMA snapshots go out asynchronously.
    const optimizer_order order{step + 1, lr.at(step), grad_scale,
                                has_ema && (step + 1) % std::max(1, topo.ema.every) == 0};
    ask_holders<bool>(
        self, "optimizer step", [](const std::string&, bool&) {}, atoms::optimize_atom_v, order);

    // The balancer's update, in every stage before the next step.
    if (topo.balancer.enabled && !load.empty())
      self->request(balancer, caf::infinite, atoms::balance_atom_v, load_report{load}, holders)
          .receive(
              [&](router_biases& updated) {
                observe_writes(self);
                biases = std::move(updated.values);
              },
              [&](caf::error& e) {
                raise_failure(self, e, [] { return std::string("balancer"); });
              });

    const auto step_end = std::chrono::steady_clock::now();
    position = batch.after;
    record.tokens = micro_batches * tr.micro_batch_size * tr.sequence_length;
    tokens_seen += record.tokens;
    record.lr = order.learning_rate;
    record.grad_norm = grad_norm;
    record.step_seconds = seconds_between(step_start, step_end);
    record.tokens_per_s = static_cast<double>(record.tokens) / record.step_seconds;
    for (const auto& [layer, counts] : load)
      record.expert_load_max_over_mean =
          std::max(record.expert_load_max_over_mean, max_over_mean(counts));
    record.load = std::move(load);
    for (std::size_t i = 0; i < ranks.size(); ++i)
      train_metrics->record_stage(ranks[i].name, reports[i].busy_seconds,
                                  std::max(0.0, walls[i] - reports[i].busy_seconds));
    train_metrics->record_step(record, biases);
    last_loss = record.loss;
    last_tokens_per_s = record.tokens_per_s;
    result.last_step = step + 1;
    last_completed = step + 1;
    after_step(step + 1);
    if (options.on_step) options.on_step(record);
    result.steps.push_back(std::move(record));

    const bool periodic = tr.checkpoint_every > 0 && (step + 1) % tr.checkpoint_every == 0;
    if (options.stop_after > 0 && step + 1 >= options.stop_after) {
      stop_now = true;
      break;
    }
    if (periodic && step + 1 < total_steps)
      result.last_checkpoint = write_checkpoint(self, step + 1, last_loss);
  }
  // Paused after the last step (--pause-after N with N the last): wait for resume.
  if (!stop_now && result.outcome == training_outcome::completed) at_step_boundary(self, stop);
  if (stop_now) result.outcome = training_outcome::stopped;
  if (result.outcome != training_outcome::non_finite && result.last_step > start_step &&
      (stop_now || options.checkpoint_at_end))
    result.last_checkpoint = write_checkpoint(self, result.last_step, last_loss);
  result.seconds = seconds_between(run_start, std::chrono::steady_clock::now());
  return result;
}

}  // namespace troupe

namespace troupe {

training_job::training_job(const topology& topo, plugin_registry& registry,
                           training_options options)
    : impl_(std::make_unique<impl>()) {
  impl_->topo = topo;
  impl_->options = std::move(options);
  try {
    impl_->build(registry);
  } catch (...) {
    shut_down();
    throw;
  }
}

training_job::~training_job() {
  shut_down();
}

void training_job::shut_down() {
  if (impl_) impl_->stop_control("the job ended");
  if (!impl_ || !impl_->runtime || impl_->stopped) return;
  impl_->stopped = true;
  std::vector<caf::actor> actors{impl_->data, impl_->balancer, impl_->ema};
  for (auto& entry : impl_->ranks) actors.push_back(entry.actor);
  for (auto& s : impl_->shards) actors.push_back(s.actor);
  for (auto& actor : actors)
    if (actor) caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
}

bool training_job::lost_process() const {
  return impl_->lost->load();
}

bool training_job::coordinates() const {
  return impl_->coordinates();
}

std::pair<int, std::string> training_job::serve() {
  if (impl_->coordinates()) fail("the coordinator's process runs the job with run()");
  auto outcome = impl_->processes->wait_for_finish();
  shut_down();
  return outcome;
}

training_result training_job::run() {
  if (impl_->stopped) fail("a training job runs once");
  if (!impl_->coordinates())
    fail("rank {} serves its actors with serve()", impl_->processes->rank());
  std::promise<training_result> done;
  auto outcome = done.get_future();
  impl_->runtime->spawn_detached("coordinator", [this, &done](caf::blocking_actor* self) {
    try {
      training_result result = impl_->coordinate(self, stop_requested_);
      // The ranks' blocking helpers go before the actor system does, in their own threads.
      for (auto& entry : impl_->ranks)
        self->request(entry.actor, caf::infinite, atoms::stop_atom_v)
            .receive([](bool) {}, [](caf::error&) {});
      done.set_value(std::move(result));
    } catch (const error& e) {
      // Stop what still runs; a rank of a dead process answers at once (its gateway knows).
      for (auto& entry : impl_->ranks)
        self->request(entry.actor, caf::infinite, atoms::stop_atom_v)
            .receive([](bool) {}, [](caf::error&) {});
      done.set_exception(std::make_exception_ptr(error(impl_->with_standing(e.what()))));
    } catch (...) {
      for (auto& entry : impl_->ranks)
        self->request(entry.actor, caf::infinite, atoms::stop_atom_v)
            .receive([](bool) {}, [](caf::error&) {});
      done.set_exception(std::current_exception());
    }
  });
  try {
    training_result result = outcome.get();
    impl_->stop_control("the job ended");
    if (impl_->processes) impl_->processes->finish(0, "");
    shut_down();
    return result;
  } catch (const std::exception& e) {
    impl_->stop_control(fmt::format("the job failed: {}", e.what()));
    if (impl_->processes) impl_->processes->finish(1, e.what());
    shut_down();
    throw;
  }
}

std::vector<std::pair<std::string, tensor>> training_job::weights() const {
  std::vector<std::pair<std::string, tensor>> all;
  for (const auto& entry : impl_->ranks)
    if (entry.setup)
      for (auto& w : entry.setup->rank->checkpoint_tensors(entry.setup->owned)) all.push_back(w);
  for (const auto& s : impl_->shards)
    if (s.setup)
      for (auto& w : s.setup->shard->parameters().named_values()) all.push_back(w);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return all;
}

std::string training_job::metrics_url() const {
  return impl_->endpoint ? impl_->endpoint->url() : std::string();
}

std::string training_job::control_url() const {
  return impl_->control_endpoint ? impl_->control_endpoint->url() : std::string();
}

}  // namespace troupe
