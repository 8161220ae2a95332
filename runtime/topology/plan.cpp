#include "runtime/topology/plan.hpp"

#include <fmt/format.h>

#include "runtime/core/text.hpp"

namespace troupe {

std::string_view name_of(actor_role role) {
  switch (role) {
    case actor_role::coordinator:
      return "coordinator";
    case actor_role::data_loader:
      return "data";
    case actor_role::stage:
      return "stage";
    case actor_role::expert_shard:
      return "expert_shard";
    case actor_role::balancer:
      return "balancer";
    case actor_role::ema:
      return "ema";
  }
  return "?";
}

const planned_actor* topology_plan::find(const std::string& name) const {
  for (const auto& actor : actors)
    if (actor.name == name) return &actor;
  return nullptr;
}

std::size_t topology_plan::count(actor_role role) const {
  std::size_t n = 0;
  for (const auto& actor : actors) n += actor.role == role ? 1 : 0;
  return n;
}

namespace {

std::string stage_name(const topology& topo, int stage, int replica) {
  return topo.data > 1 ? fmt::format("stage{}.r{}", stage, replica) : fmt::format("stage{}", stage);
}

planned_actor make_actor(std::string name, actor_role role, placement place) {
  planned_actor actor;
  actor.name = std::move(name);
  actor.role = role;
  actor.place = std::move(place);
  return actor;
}

bool has_moe_layers(const topology& topo, const std::vector<int>& layers) {
  for (int layer : layers)
    if (topo.model.is_moe_layer(layer)) return true;
  return false;
}

/// The coordinator, the data loader, every stage replica and expert shard, the balancer and
/// the EMA actor, in that order.
void plan_actors(const topology& topo, topology_plan& plan) {
  const std::string first_host = topo.hosts.front().name;
  plan.actors.push_back(
      make_actor("coordinator", actor_role::coordinator, {first_host, device::cpu()}));
  plan.actors.push_back(make_actor("data", actor_role::data_loader, {first_host, device::cpu()}));
  const int stages = static_cast<int>(topo.stages.size());
  for (int s = 0; s < stages; ++s) {
    const auto& spec = topo.stages[static_cast<std::size_t>(s)];
    for (int r = 0; r < static_cast<int>(spec.replicas.size()); ++r) {
      planned_actor actor = make_actor(stage_name(topo, s, r), actor_role::stage,
                                       spec.replicas[static_cast<std::size_t>(r)]);
      actor.stage = s;
      actor.replica = r;
      actor.layers = spec.layers;
      actor.embedding = s == 0;
      actor.head = s == stages - 1;
      plan.actors.push_back(std::move(actor));
    }
  }
  for (std::size_t i = 0; i < topo.expert_shards.size(); ++i) {
    planned_actor actor = make_actor(fmt::format("shard{}", i), actor_role::expert_shard,
                                     topo.expert_shards[i].place);
    actor.experts = topo.expert_shards[i].experts;
    plan.actors.push_back(std::move(actor));
  }
  const bool moe = topo.model.moe_layer_count() > 0;
  if (topo.balancer.enabled && moe)
    plan.actors.push_back(
        make_actor("balancer", actor_role::balancer, {topo.balancer.host, device::cpu()}));
  if (topo.ema.enabled)
    plan.actors.push_back(make_actor("ema", actor_role::ema, {topo.ema.host, device::cpu()}));
}

/// The coordinator's control links, then the token, label and activation links of each replica.
void plan_pipeline_links(const topology& topo, topology_plan& plan) {
  const int stages = static_cast<int>(topo.stages.size());
  for (const auto& actor : plan.actors)
    if (actor.role != actor_role::coordinator)
      plan.links.push_back({"coordinator", actor.name, "control"});
  for (int r = 0; r < topo.data; ++r) {
    plan.links.push_back({"data", stage_name(topo, 0, r), "token batches"});
    if (stages > 1) plan.links.push_back({"data", stage_name(topo, stages - 1, r), "labels"});
    for (int s = 0; s + 1 < stages; ++s) {
      plan.links.push_back({stage_name(topo, s, r), stage_name(topo, s + 1, r), "activations"});
      plan.links.push_back(
          {stage_name(topo, s + 1, r), stage_name(topo, s, r), "activation gradients"});
    }
  }
}

/// A stage with MoE layers: its links to every expert shard, and to the balancer if there is one.
void plan_expert_links(topology_plan& plan, const planned_actor& actor, const std::string& dispatch,
                       const std::string& combine) {
  for (const auto& shard : plan.actors) {
    if (shard.role != actor_role::expert_shard) continue;
    plan.links.push_back({actor.name, shard.name, dispatch});
    plan.links.push_back({shard.name, actor.name, combine});
  }
  if (plan.find("balancer") != nullptr) {
    plan.links.push_back({actor.name, "balancer", "expert counts"});
    plan.links.push_back({"balancer", actor.name, "router biases"});
  }
}

/// The expert shards' parameter-snapshot links to the EMA actor, if there is one.
void plan_shard_ema_links(topology_plan& plan) {
  if (plan.find("ema") != nullptr) {
    for (const auto& shard : std::vector<planned_actor>(plan.actors))
      if (shard.role == actor_role::expert_shard)
        plan.links.push_back({shard.name, "ema", "parameter snapshots"});
  }
}

/// Each stage's links to the expert shards, the balancer, the EMA actor and its next replica,
/// then the shards' links to the EMA actor.
void plan_stage_links(const topology& topo, topology_plan& plan) {
  const bool moe = topo.model.moe_layer_count() > 0;
  const std::string dispatch = topo.expert_dispatch == precision::fp8
                                   ? "dispatch (fp8 + 1x128 scales)"
                               : topo.expert_dispatch == precision::bf16 ? "dispatch (bf16)"
                                                                         : "dispatch";
  const std::string combine = topo.expert_combine == precision::bf16 ? "combine (bf16)" : "combine";
  for (const auto& actor : std::vector<planned_actor>(plan.actors)) {
    if (actor.role != actor_role::stage) continue;
    const bool stage_moe = has_moe_layers(topo, actor.layers) ||
                           (actor.head && topo.model.num_nextn_predict_layers > 0 && moe);
    if (stage_moe) plan_expert_links(plan, actor, dispatch, combine);
    if (plan.find("ema") != nullptr)
      plan.links.push_back({actor.name, "ema", "parameter snapshots"});
    if (topo.data > 1 && actor.replica + 1 < topo.data)
      plan.links.push_back(
          {actor.name, stage_name(topo, actor.stage, actor.replica + 1), "gradient all-reduce"});
  }
  plan_shard_ema_links(plan);
}

/// One process per host that has actors, rank 0 first (it hosts the coordinator).
void plan_processes(const topology& topo, topology_plan& plan) {
  for (const auto& host : topo.hosts) {
    planned_process process{static_cast<int>(plan.processes.size()), host.name, host.address, {}};
    for (const auto& actor : plan.actors)
      if (actor.place.host == host.name) process.actors.push_back(actor.name);
    if (!process.actors.empty()) plan.processes.push_back(std::move(process));
  }
}

}  // namespace

topology_plan plan_topology(const topology& topo) {
  topology_plan plan;
  plan_actors(topo, plan);
  // Links. The coordinator drives every actor; the rest follow the data.
  plan_pipeline_links(topo, plan);
  plan_stage_links(topo, plan);
  plan_processes(topo, plan);
  return plan;
}

namespace {

std::string dot_id(const std::string& name) {
  return "\"" + name + "\"";
}

std::string actor_label(const planned_actor& actor) {
  std::string label = actor.name;
  if (actor.role == actor_role::stage) {
    label += fmt::format("\\nlayers {}", format_index_ranges(actor.layers));
    if (actor.embedding) label += "\\n+ embedding";
    if (actor.head) label += "\\n+ head, MTP";
  }
  if (actor.role == actor_role::expert_shard)
    label += fmt::format("\\nexperts {}", format_index_ranges(actor.experts));
  label += "\\n" + to_string(actor.place.where);
  return label;
}

std::string_view actor_shape(actor_role role) {
  switch (role) {
    case actor_role::coordinator:
      return "doubleoctagon";
    case actor_role::stage:
      return "box";
    case actor_role::expert_shard:
      return "box3d";
    default:
      return "ellipse";
  }
}

}  // namespace

std::string to_dot(const topology& topo, const topology_plan& plan) {
  std::string out = fmt::format(
      "digraph \"{}\" {{\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n", topo.name);
  for (const auto& process : plan.processes) {
    out += fmt::format("  subgraph \"cluster_{}\" {{\n    label=\"{} ({}, rank {})\";\n",
                       process.host, process.host, process.address, process.rank);
    for (const auto& name : process.actors) {
      const planned_actor& actor = *plan.find(name);
      out += fmt::format("    {} [label=\"{}\", shape={}];\n", dot_id(name), actor_label(actor),
                         actor_shape(actor.role));
    }
    out += "  }\n";
  }
  for (const auto& link : plan.links) {
    const bool control = link.carries == "control";
    out += fmt::format("  {} -> {} [label=\"{}\"{}];\n", dot_id(link.from), dot_id(link.to),
                       control ? "" : link.carries, control ? ", style=dotted, color=gray" : "");
  }
  out += "}\n";
  return out;
}

std::string summarize(const topology& topo, const topology_plan& plan) {
  const auto& m = topo.model;
  std::string out;
  out += fmt::format("job {}{}\n", topo.name,
                     topo.description.empty() ? "" : " — " + topo.description);
  out += fmt::format(
      "model: {} layers ({} dense, {} MoE), hidden {}, {} heads, vocab {}, {:.2f}M parameters\n",
      m.num_hidden_layers, m.num_hidden_layers - m.moe_layer_count(), m.moe_layer_count(),
      m.hidden_size, m.num_attention_heads, m.vocab_size,
      static_cast<double>(m.parameter_count()) / 1e6);
  if (m.n_routed_experts > 0)
    out +=
        fmt::format("experts: {} routed + {} shared, top-{} of {} groups (keep {}), MTP depth {}\n",
                    m.n_routed_experts, m.n_shared_experts, m.num_experts_per_tok, m.n_group,
                    m.topk_group, m.num_nextn_predict_layers);
  out += fmt::format(
      "parallel: pipeline {} × data {} = {} stage ranks, expert {}; schedule {} with {} "
      "micro-batches; precision {}\n",
      topo.pipeline, topo.data, topo.pipeline * topo.data, topo.expert,
      to_string(topo.schedule.kind), topo.schedule.micro_batches, to_string(topo.gemm_precision));
  for (const auto& choice : topo.plugins)
    out += fmt::format("plugin {}: {}{}\n", name_of(choice.role), choice.reference,
                       choice.resolved ? fmt::format(" ({})", choice.resolved->string())
                                       : std::string(" (not found)"));
  out +=
      fmt::format("plan: {} actors in {} process{}, {} links\n", plan.actors.size(),
                  plan.processes.size(), plan.processes.size() == 1 ? "" : "es", plan.links.size());
  for (const auto& process : plan.processes)
    out += fmt::format("  rank {} on {} ({}): {}\n", process.rank, process.host, process.address,
                       join(process.actors, ", "));
  if (!m.defaulted.empty() && m.defaulted.size() < 12)
    out +=
        fmt::format("model fields left at transformers' defaults: {}\n", join(m.defaulted, ", "));
  return out;
}

}  // namespace troupe
