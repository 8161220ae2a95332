// Topology files: the shipped ones validate, and every kind of mistake is reported at its
// file:line:column with what is wrong and what is allowed.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "runtime/plugin/registry.hpp"
#include "runtime/topology/load.hpp"
#include "runtime/topology/machine_check.hpp"
#include "runtime/topology/plan.hpp"

namespace {

namespace fs = std::filesystem;
using troupe::diagnostic;
using troupe::load_topology_text;
using troupe::topology_error;

fs::path source_dir() {
  const char* dir = std::getenv("TROUPE_SOURCE_DIR");
  return dir != nullptr ? fs::path(dir) : fs::current_path();
}

/// Test topologies sit (virtually) next to the shipped ones, so models/tiny/config.json resolves.
fs::path virtual_file(const std::string& name = "test.toml") {
  return source_dir() / "topologies" / name;
}

troupe::topology_load_options no_plugins() {
  troupe::topology_load_options options;
  options.resolve_plugins = false;
  return options;
}

const std::string header = R"([job]
name = "t"

[model]
config = "models/tiny/config.json"
)";

/// The diagnostics of a topology expected to fail.
std::vector<diagnostic> errors_of(const std::string& text,
                                  troupe::topology_load_options options = no_plugins()) {
  try {
    load_topology_text(text, virtual_file(), options);
  } catch (const topology_error& e) {
    return e.diagnostics();
  }
  ADD_FAILURE() << "expected the topology to fail:\n" << text;
  return {};
}

/// Finds the diagnostic whose message contains `part` and checks its line and column.
void expect_error(const std::vector<diagnostic>& diagnostics, const std::string& part, int line,
                  int column = -1) {
  for (const auto& d : diagnostics) {
    if (d.message.find(part) == std::string::npos) continue;
    EXPECT_EQ(d.where.file, virtual_file().string());
    EXPECT_EQ(d.where.line, line) << d.message;
    if (column >= 0) {
      EXPECT_EQ(d.where.column, column) << d.message;
    }
    return;
  }
  std::string all;
  for (const auto& d : diagnostics) all += "\n  " + to_string(d);
  ADD_FAILURE() << "no error containing '" << part << "' among:" << all;
}

TEST(ShippedTopologies, EveryOneValidatesAndPlans) {
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(source_dir() / "topologies")) {
    if (entry.path().extension() != ".toml") continue;
    SCOPED_TRACE(entry.path().string());
    troupe::loaded_topology loaded;
    ASSERT_NO_THROW(loaded = troupe::load_topology(entry.path(), no_plugins()));
    const auto plan = troupe::plan_topology(loaded.topo);
    EXPECT_EQ(plan.count(troupe::actor_role::coordinator), 1u);
    EXPECT_EQ(plan.count(troupe::actor_role::stage),
              static_cast<std::size_t>(loaded.topo.pipeline * loaded.topo.data));
    EXPECT_FALSE(troupe::to_dot(loaded.topo, plan).empty());
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

TEST(ShippedTopologies, TinyIsOneCpuProcessAndTheOthersAreWhatTheySay) {
  auto tiny = troupe::load_topology(source_dir() / "topologies/tiny.toml", no_plugins());
  auto plan = troupe::plan_topology(tiny.topo);
  EXPECT_EQ(plan.processes.size(), 1u);
  for (const auto& actor : plan.actors) EXPECT_TRUE(actor.place.where.is_cpu()) << actor.name;
  EXPECT_EQ(tiny.topo.expert_shards[0].experts,
            (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));  // even split

  auto pp2 = troupe::load_topology(source_dir() / "topologies/pp2-ep4.toml", no_plugins());
  EXPECT_EQ(pp2.topo.stages.size(), 2u);
  EXPECT_EQ(pp2.topo.expert_shards.size(), 4u);

  auto gpu = troupe::load_topology(source_dir() / "topologies/gpu-host-8.toml", no_plugins());
  auto gpu_plan = troupe::plan_topology(gpu.topo);
  ASSERT_EQ(gpu.topo.hosts.size(), 1u);
  EXPECT_EQ(gpu.topo.hosts[0].gpus, 8);
  std::set<int> devices;
  for (const auto& actor : gpu_plan.actors)
    if (actor.role == troupe::actor_role::stage) devices.insert(actor.place.where.index);
  EXPECT_EQ(devices.size(), 8u);
  ASSERT_TRUE(gpu.topo.model.yarn.has_value());
  EXPECT_TRUE(gpu.topo.model.quantization.has_value());
}

// Placements against a machine (runtime/topology/machine_check.hpp): each cuda:N the machine
// cannot honour is an error at its `device` key, whatever the machine lacks.
TEST(MachineCheck, GpuPlacementsAreHonouredOrRefusedAtTheirDeviceKey) {
  auto gpu = troupe::load_topology(source_dir() / "topologies/gpu-host-8.toml", no_plugins());
  const std::string file = (source_dir() / "topologies/gpu-host-8.toml").string();
  troupe::machine_devices none;  // a build without CUDA
  auto errors = troupe::check_devices(gpu.topo, none);
  ASSERT_EQ(errors.size(), 16u);  // 4 stages x 2 replicas, 8 expert shards
  EXPECT_EQ(errors[0].where.file, file);
  EXPECT_GT(errors[0].where.line, 0);
  EXPECT_NE(errors[0].message.find("stage 0 replica 0 is placed on cuda:0, but this troupe was "
                                   "built without CUDA"),
            std::string::npos)
      << errors[0].message;

  troupe::machine_devices two{true, 2, "", true, {}};  // CUDA, two GPUs, a model that runs on them
  errors = troupe::check_devices(gpu.topo, two);
  ASSERT_EQ(errors.size(), 12u);  // everything on cuda:2 .. cuda:7
  EXPECT_NE(errors[0].message.find("stage 0 replica 1 is placed on cuda:4, but this machine has 2 "
                                   "GPUs (cuda:0 to cuda:1)"),
            std::string::npos)
      << errors[0].message;
  EXPECT_TRUE(troupe::check_devices(gpu.topo, {true, 8, "", true, {}}).empty());
  EXPECT_TRUE(troupe::check_devices(gpu.topo, none, {"elsewhere"}).empty());  // not this host's

  // Training refuses GPU placements where the model has no GPU path, rather than run on the CPU.
  errors = troupe::check_devices(gpu.topo, {true, 8, "", false, {}}, {}, /*for_training=*/true);
  ASSERT_EQ(errors.size(), 16u);
  EXPECT_NE(errors[0].message.find("this troupe's model runs on the CPU only"), std::string::npos);
  // With the GPU path, expert shards next to GPU stages wait for expert parallelism over NCCL.
  errors = troupe::check_devices(gpu.topo, {true, 8, "", true, {}}, {}, /*for_training=*/true);
  ASSERT_EQ(errors.size(), 16u);
  EXPECT_NE(errors[0].message.find("next to expert shards"), std::string::npos)
      << errors[0].message;
  EXPECT_NE(errors[15].message.find("expert shards run on the CPU until expert parallelism"),
            std::string::npos)
      << errors[15].message;
  auto one = troupe::load_topology(source_dir() / "topologies/gpu-1.toml", no_plugins());
  EXPECT_TRUE(troupe::check_devices(one.topo, {true, 1, "", true, {}}, {}, true).empty());
  EXPECT_EQ(troupe::check_devices(one.topo, none, {}, true).size(), 1u);

  // A GPU that cannot hold its stages' parameters, gradients and AdamW moments is refused before
  // anything is built, at the stage's device key, with what it needs and what it has.
  const std::int64_t parameters = one.topo.model.parameter_count();
  errors = troupe::check_devices(one.topo, {true, 1, "", true, {std::size_t{1} << 30}}, {}, true);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].where.line, one.topo.where("stages[0].device").line);
  EXPECT_NE(errors[0].message.find(
                fmt::format("the model does not fit on cuda:0: stage 0 holds {:.2f} G parameters",
                            static_cast<double>(parameters) / 1e9)),
            std::string::npos)
      << errors[0].message;
  EXPECT_NE(errors[0].message.find("but cuda:0 has 1.0 GiB free; place fewer layers on it"),
            std::string::npos)
      << errors[0].message;
  // bf16 keeps the routed experts' BF16 copy on top.
  EXPECT_NE(errors[0].message.find("and the routed experts' BF16 copies"), std::string::npos)
      << errors[0].message;
  std::vector<int> all_layers(static_cast<std::size_t>(one.topo.model.num_hidden_layers));
  std::iota(all_layers.begin(), all_layers.end(), 0);
  const std::int64_t routed = one.topo.model.stage_routed_expert_parameter_count(all_layers);
  EXPECT_EQ(routed, (15 + 1) * 64 * 3 * 1024 * 256);  // 15 MoE layers and the MTP module's
  const std::size_t just_enough =
      static_cast<std::size_t>(parameters) * troupe::training_state_bytes_per_parameter +
      static_cast<std::size_t>(routed) * troupe::rounded_expert_bytes_per_parameter;
  EXPECT_TRUE(
      troupe::check_devices(one.topo, {true, 1, "", true, {just_enough}}, {}, true).empty());
  EXPECT_EQ(
      troupe::check_devices(one.topo, {true, 1, "", true, {just_enough - 1}}, {}, true).size(), 1u);
  // The shipped medium topology fits an H200 (139.3 GiB free when idle), not an 80 GB GPU.
  auto medium = troupe::load_topology(source_dir() / "topologies/gpu-1-medium.toml", no_plugins());
  const std::size_t h200_free = static_cast<std::size_t>(139.3 * (1 << 30));
  EXPECT_TRUE(
      troupe::check_devices(medium.topo, {true, 1, "", true, {h200_free}}, {}, true).empty());
  EXPECT_EQ(
      troupe::check_devices(medium.topo, {true, 1, "", true, {std::size_t{79} << 30}}, {}, true)
          .size(),
      1u);
  // The stages of a pipeline hold the whole model between them.
  const auto& config = one.topo.model;
  std::vector<int> front, back;
  for (int layer = 0; layer < config.num_hidden_layers; ++layer)
    (layer < 5 ? front : back).push_back(layer);
  EXPECT_EQ(config.stage_parameter_count(front) + config.stage_parameter_count(back), parameters);

  auto tiny = troupe::load_topology(source_dir() / "topologies/tiny.toml", no_plugins());
  EXPECT_TRUE(troupe::check_devices(tiny.topo, none, {}, true).empty());
}

TEST(TopologyErrors, InvalidTomlPointsAtTheSyntaxError) {
  auto errors = errors_of(header + "[parallel]\npipeline = = 2\n");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("not valid TOML"), std::string::npos);
  EXPECT_EQ(errors[0].where.line, 7);
}

TEST(TopologyErrors, UnknownKeysAndSectionsSuggestTheNearestValidOne) {
  auto errors = errors_of(header + "precison = \"fp8\"\n\n[paralel]\npipeline = 1\n");
  expect_error(errors,
               "unknown key 'precison' in [model] (did you mean 'precision'?); allowed keys: "
               "config, inline, precision",
               6, 1);
  expect_error(errors, "unknown section 'paralel' (did you mean 'parallel'?)", 8, 2);
}

TEST(TopologyErrors, MissingKeysAndSections) {
  auto errors =
      errors_of("[model]\nconfig = \"models/tiny/config.json\"\n\n[[stages]]\ndevice = \"cpu\"\n");
  expect_error(errors, "missing section [job]", 1, 1);
  expect_error(errors, "missing key 'layers' in [[stages]] entry 0", 4);
  auto no_model = errors_of(
      "[job]\nname = \"x\"\n\n[model]\nprecision = \"fp32\"\n\n[[stages]]\nlayers = \"0-3\"\n");
  expect_error(no_model, "[model] needs `config", 4);
}

TEST(TopologyErrors, WrongTypesAndChoices) {
  auto errors =
      errors_of(header + "\n[parallel]\npipeline = \"two\"\n\n[schedule]\nkind = \"gpipe\"\n");
  expect_error(errors, "parallel.pipeline must be an integer", 8, 12);
  expect_error(errors,
               "schedule.kind = \"gpipe\" is not allowed; use one of: sequential, 1f1b, dualpipe",
               11, 8);
}

TEST(TopologyErrors, ParallelSizesThatDoNotMultiplyOut) {
  auto errors = errors_of(header + R"(
[parallel]
pipeline = 2
data = 2
world = 3
expert = 4

[[stages]]
layers = "0-3"
device = ["cpu", "cpu"]

[[expert_shards]]
[[expert_shards]]
)");
  expect_error(errors, "world = 3 but pipeline × data = 2 × 2 = 4", 10);
  auto sizes = errors_of(header + R"(
[parallel]
pipeline = 2
data = 2
expert = 4

[[stages]]
layers = "0-1"
device = ["cpu", "cpu"]

[[stages]]
layers = "2-3"

[[expert_shards]]
[[expert_shards]]
)");
  expect_error(sizes, "stage 1 lists 1 device(s) or host(s) but parallel.data = 2",
               16);  // no device key: the entry
  expect_error(sizes, "parallel.expert = 4 but 2 [[expert_shards]] are listed", 10);
  auto stages = errors_of(header + "\n[parallel]\npipeline = 3\n\n[[stages]]\nlayers = \"0-3\"\n");
  expect_error(stages, "parallel.pipeline = 3 but 1 [[stages]] are listed", 8);
}

/// Hosts a and b, then a [parallel] table whose keys follow.
const std::string hosts_a_b = R"(
[[hosts]]
name = "a"
[[hosts]]
name = "b"
[parallel])";

TEST(TopologyErrors, ReplicaHostsAndZero) {
  // A host per replica places data-parallel replicas on several hosts; the lists must agree.
  const std::string hosts = hosts_a_b + R"(
data = 2
expert = 1
[[expert_shards]]
host = "a"
)";
  auto ok =
      load_topology_text(header + hosts + "[[stages]]\nlayers = \"0-3\"\nhost = [\"a\", \"b\"]\n",
                         virtual_file(), no_plugins());
  ASSERT_EQ(ok.topo.stages[0].replicas.size(), 2u);
  EXPECT_EQ(ok.topo.stages[0].replicas[1].host, "b");
  auto mismatch = errors_of(header + hosts +
                            "[[stages]]\nlayers = \"0-3\"\nhost = [\"a\", \"b\"]\n"
                            "device = [\"cpu\", \"cpu\", \"cpu\"]\n");
  expect_error(mismatch, "stages[0]: 2 hosts but 3 devices", 18);
  auto unknown =
      errors_of(header + hosts + "[[stages]]\nlayers = \"0-3\"\nhost = [\"a\", \"c\"]\n");
  expect_error(unknown, "stage 0 replica 1 is placed on host 'c'", 18);
  auto zero = errors_of(header + hosts + "[[stages]]\nlayers = \"0-3\"\nhost = [\"a\", \"b\"]\n" +
                        "[train]\nzero = 2\n");
  expect_error(zero, "train.zero", 20);
  // ZeRO-1's pieces go through the host: GPU stages are refused (once, however many replicas).
  auto on_gpu = errors_of(header +
                          "[[hosts]]\nname = \"g\"\ngpus = 1\n[parallel]\ndata = 2\n"
                          "[[stages]]\nlayers = \"0-3\"\ndevice = [\"cuda:0\", \"cuda:0\"]\n"
                          "[train]\nzero = 1\n");
  expect_error(on_gpu, "stage 0 replica 0 is on cuda:0: ZeRO-1 between GPUs goes over NCCL", 15);
  EXPECT_EQ(
      std::count_if(on_gpu.begin(), on_gpu.end(),
                    [](const auto& d) { return d.message.find("ZeRO-1") != std::string::npos; }),
      1);
}

TEST(TopologyErrors, NodeLimitedRouting) {
  // 16 experts, top-4: 14 on host a, 2 on host b.
  const std::string hosts = hosts_a_b + R"(
expert = 2
max_nodes_per_token = 1
[[stages]]
layers = "0-3"
host = "a"
[[expert_shards]]
experts = "0-13"
host = "a"
[[expert_shards]]
experts = "14-15"
host = "b"
)";
  auto uneven = errors_of(header + hosts);
  expect_error(uneven,
               "parallel.max_nodes_per_token = 1 cannot route a token to its 4 experts: a host "
               "holds as few as 2 routed experts",
               13);
  std::string even = header + hosts;
  even.replace(even.find("0-13"), 4, "0-7");
  even.replace(even.find("14-15"), 5, "8-15");
  auto fine = load_topology_text(even, virtual_file(), no_plugins());
  EXPECT_TRUE(fine.warnings.empty());
  EXPECT_EQ(fine.topo.node_of_experts(),
            (std::vector<std::int32_t>{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}));
  even.replace(even.find("max_nodes_per_token = 1"), 23, "max_nodes_per_token = 2");
  auto every = load_topology_text(even, virtual_file(), no_plugins());
  ASSERT_EQ(every.warnings.size(), 1u);
  EXPECT_NE(every.warnings[0].message.find("covers every host of the expert shards (2)"),
            std::string::npos)
      << every.warnings[0].message;
  auto unsharded =
      errors_of(header + "[parallel]\nmax_nodes_per_token = 1\n[[stages]]\nlayers = \"0-3\"\n");
  expect_error(unsharded, "node-limited routing needs the routed experts on [[expert_shards]]", 7);
}

TEST(TopologyErrors, LayersCoveredByNoStageOrByTwo) {
  auto errors = errors_of(header + R"(
[parallel]
pipeline = 3

[[stages]]
layers = "0-1"

[[stages]]
layers = [1, 2]

[[stages]]
layers = [5]
)");
  expect_error(errors, "layer 1 is covered by two stages: stage 0", 14, 1);
  expect_error(errors, "layer 5 does not exist: the model has 4 layers (0-3)", 17);
  expect_error(errors, "layer 3 is covered by no stage", 10, 1);
  auto order = errors_of(header +
                         "\n[parallel]\npipeline = 2\n\n[[stages]]\nlayers = "
                         "\"2-3\"\n\n[[stages]]\nlayers = \"0,1\"\n");
  expect_error(order, "come before stage 0's", 14);
  auto gap = errors_of(header + "\n[[stages]]\nlayers = \"0-1,3\"\n");
  expect_error(gap, "not consecutive", 8);
}

TEST(TopologyErrors, ExpertsCoveredByNoShardOrByTwo) {
  const std::string stages = "\n[parallel]\nexpert = 2\n\n[[stages]]\nlayers = \"0-3\"\n";
  auto errors = errors_of(header + stages + R"(
[[expert_shards]]
experts = "0-8"

[[expert_shards]]
experts = "8-13,20"
)");
  expect_error(errors, "expert 8 is in two shards, 0 and 1", 17);
  expect_error(errors, "expert 20 does not exist: the model has 16 routed experts (0-15)", 17);
  expect_error(errors, "experts 14-15 are covered by no shard", 13, 1);
  auto uneven = errors_of(header +
                          "\n[parallel]\nexpert = 3\n\n[[stages]]\nlayers = "
                          "\"0-3\"\n\n[[expert_shards]]\n[[expert_shards]]\n[[expert_shards]]\n");
  expect_error(uneven, "16 routed experts do not split evenly over 3 shards", 13);
}

TEST(TopologyErrors, PlacementsOnHostsAndDevicesThatDoNotExist) {
  auto errors = errors_of(header + R"(
[[hosts]]
name = "node0"
gpus = 2

[[hosts]]
name = "node1"

[[stages]]
layers = "0-3"
host = "node2"
device = "cuda:0"

[ema]
host = "node1"

[balancer]
host = "nod0"
)");
  expect_error(errors,
               "placed on host 'node2', which does not exist (did you mean 'node0'?); hosts are: "
               "node0, node1",
               16, 1);
  expect_error(errors, "the balancer actor is placed on host 'nod0'", 23);
  auto device = errors_of(
      header +
      "\n[[hosts]]\nname = \"n\"\ngpus = 2\n\n[[stages]]\nlayers = \"0-3\"\ndevice = \"cuda:2\"\n");
  expect_error(device,
               "stage 0 is placed on cuda:2, which does not exist on host 'n': it has gpus = 2 "
               "(cuda:0 to cuda:1)",
               13);
  auto cpu_only = errors_of(header + "\n[[stages]]\nlayers = \"0-3\"\ndevice = \"cuda:0\"\n");
  expect_error(cpu_only, "it has no GPUs", 9);
  auto bad_device = errors_of(header + "\n[[stages]]\nlayers = \"0-3\"\ndevice = \"gpu0\"\n");
  expect_error(bad_device, "'gpu0' is not a device", 9, 10);
  auto ambiguous = errors_of(
      header +
      "\n[[hosts]]\nname = \"a\"\n[[hosts]]\nname = \"b\"\n\n[[stages]]\nlayers = \"0-3\"\n");
  expect_error(ambiguous, "stage 0 needs `host = ...`: the topology has 2 hosts (a, b)", 12);
}

/// The header with three hosts and one stage on the first: [serve] comes at line 19.
std::string three_hosts() {
  return header + R"(
[[hosts]]
name = "node0"
[[hosts]]
name = "node1"
[[hosts]]
name = "node2"

[[stages]]
layers = "0-3"
host = "node0"
)";
}

TEST(TopologyErrors, DecodeHostsAreOtherHostsEachOnce) {
  const std::string hosts = three_hosts();
  // Line 19 is [serve]'s first key.
  auto errors = errors_of(hosts +
                          "\n[serve]\ndecode_instances = 1\ndecode_hosts = [\"node1\", "
                          "\"node0\", \"nod2\", \"node1\"]\n");
  expect_error(errors, "serve.decode_hosts[1] = \"node0\" is the prefill host", 20, 26);
  expect_error(errors, "serve.decode_hosts[2] = \"nod2\" names no host (did you mean 'node2'?)",
               20);
  expect_error(errors, "serve.decode_hosts[3] = \"node1\" is named twice", 20);
  auto both = errors_of(hosts +
                        "\n[serve]\ndecode_instances = 1\ndecode_host = \"node1\"\n"
                        "decode_hosts = [\"node2\"]\n");
  expect_error(both, "give decode_host or decode_hosts (a list), not both", 21);
  auto none = errors_of(hosts + "\n[serve]\ndecode_host = \"node1\"\n");
  expect_error(none, "serve.decode_host needs serve.decode_instances of 1 or more", 19);
  auto one = errors_of(hosts + "\n[serve]\ndecode_instances = 1\ndecode_host = \"node3\"\n");
  expect_error(one, "serve.decode_host = \"node3\" names no host", 20);

  const auto loaded = load_topology_text(
      hosts + "\n[serve]\ndecode_instances = 2\ndecode_hosts = [\"node2\", \"node1\"]\n",
      virtual_file(), no_plugins());
  EXPECT_EQ(loaded.topo.serve.decode_hosts, (std::vector<std::string>{"node2", "node1"}));
}

TEST(TopologyErrors, ExpertHostsAreOtherHostsThanTheDecodeHosts) {
  const std::string hosts = three_hosts();
  // Line 19 is [serve]'s first key.
  auto errors = errors_of(hosts +
                          "\n[serve]\ndecode_instances = 1\ndecode_host = \"node1\"\n"
                          "expert_shards = 4\nexpert_hosts = [\"node1\", \"node0\", \"nodes2\"]\n");
  expect_error(errors,
               "serve.expert_hosts[0] = \"node1\" is named twice in [serve]: it runs the process "
               "of serve.decode_hosts already",
               22);
  expect_error(errors, "serve.expert_hosts[1] = \"node0\" is the prefill host", 22);
  expect_error(errors, "serve.expert_hosts[2] = \"nodes2\" names no host (did you mean 'node2'?)",
               22);
  auto few = errors_of(hosts +
                       "\n[serve]\nexpert_shards = 1\nexpert_hosts = [\"node1\", "
                       "\"node2\"]\n");
  expect_error(few, "serve.expert_hosts names 2 hosts for 1 expert shards per instance", 20);
  auto both = errors_of(hosts +
                        "\n[serve]\nexpert_shards = 2\nexpert_host = \"node1\"\n"
                        "expert_hosts = [\"node2\"]\n");
  expect_error(both, "give expert_host or expert_hosts (a list), not both", 21);

  const auto loaded = load_topology_text(
      hosts + "\n[serve]\nexpert_shards = 4\nexpert_hosts = [\"node2\", \"node1\"]\n",
      virtual_file(), no_plugins());
  EXPECT_EQ(loaded.topo.serve.expert_hosts, (std::vector<std::string>{"node2", "node1"}));
}

TEST(TopologyErrors, ThePrefillHostIsAHostOfItsOwn) {
  // [serve]'s first key is line 19.
  auto errors = errors_of(three_hosts() + "\n[serve]\nprefill_host = \"nod1\"\n");
  expect_error(errors, "serve.prefill_host = \"nod1\" names no host (did you mean 'node1'?)", 19);
  auto taken = errors_of(three_hosts() +
                         "\n[serve]\nprefill_host = \"node1\"\ndecode_instances = 1\n"
                         "decode_hosts = [\"node0\", \"node1\"]\n");
  expect_error(taken, "serve.decode_hosts[1] = \"node1\" is the prefill host", 21);
  const auto loaded = load_topology_text(three_hosts() +
                                             "\n[serve]\nprefill_host = \"node2\"\n"
                                             "decode_instances = 1\ndecode_hosts = [\"node0\"]\n",
                                         virtual_file(), no_plugins());
  EXPECT_EQ(loaded.topo.serve.prefill_host, "node2");
  EXPECT_EQ(load_topology_text(three_hosts(), virtual_file(), no_plugins()).topo.serve.prefill_host,
            "node0")
      << "the first host by default";
}

TEST(TopologyErrors, ServingDevicesExistOnTheirRolesHosts) {
  // node1 has one GPU, node0 none: [serve] is line 19.
  std::string hosts = three_hosts();
  hosts.replace(hosts.find("name = \"node1\""), 14, "name = \"node1\"\ngpus = 1");
  auto errors = errors_of(hosts +
                          "[serve]\ndecode_instances = 1\ndecode_host = \"node1\"\n"
                          "prefill_device = \"cuda:0\"\ndecode_device = \"cuda:1\"\n"
                          "device = \"gpu0\"\n");
  expect_error(errors, "serve.prefill_device = \"cuda:0\" does not exist on host 'node0'", 21);
  expect_error(errors, "serve.decode_device = \"cuda:1\" does not exist on host 'node1'", 22);
  expect_error(errors, "serve.device: ", 23);
  const auto loaded = load_topology_text(hosts +
                                             "[serve]\ndecode_instances = 1\ndecode_host = "
                                             "\"node1\"\ndecode_device = \"cuda:0\"\n",
                                         virtual_file(), no_plugins());
  EXPECT_EQ(loaded.topo.serve.decode_device, "cuda:0");
  EXPECT_EQ(loaded.topo.serve.device, "cpu");
}

TEST(TopologyErrors, Bf16ComputesOnGpusOnly) {
  auto errors = errors_of(header + "precision = \"bf16\"\n\n[[stages]]\nlayers = \"0-3\"\n");
  expect_error(errors,
               "stage 0 is on the CPU, but model.precision = \"bf16\" computes on a GPU's tensor "
               "cores",
               8);
}

TEST(TopologyErrors, DualPipeConstraints) {
  auto errors = errors_of(header + R"(
[parallel]
pipeline = 3

[schedule]
kind = "dualpipe"
micro_batches = 5

[[stages]]
layers = "0"
[[stages]]
layers = "1-2"
[[stages]]
layers = "3"
)");
  expect_error(errors, "DualPipe needs an even pipeline size", 11);
  expect_error(errors, "even number of micro-batches, at least 2 × pipeline = 6; got 5", 12);
}

TEST(TopologyErrors, ModelConfigErrorsNameTheFieldAndItsPlace) {
  auto errors = errors_of(R"([job]
name = "t"

[model.inline]
hidden_size = 64
num_hidden_layers = 2
n_routed_experts = 16
n_group = 3
scoring_func = "softmax"

[[stages]]
layers = "0-1"
)");
  ASSERT_EQ(errors.size(), 1u);  // the first bad field stops the model config
  expect_error(errors, "model config field 'scoring_func': \"softmax\" is not supported", 9, 16);

  const fs::path dir = fs::temp_directory_path() / "troupe-topology-test";
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << "{\n  \"hidden_size\": 64,\n  \"num_hidden_layers\": 2,\n  "
                                        "\"first_k_dense_replace\": 1,\n  \"n_group\": 3\n}\n";
  try {
    load_topology_text(
        "[job]\nname = \"t\"\n[model]\nconfig = \"config.json\"\n[[stages]]\nlayers = \"0-1\"\n",
        dir / "t.toml", no_plugins());
    FAIL();
  } catch (const topology_error& e) {
    ASSERT_EQ(e.diagnostics().size(), 1u);
    EXPECT_EQ(e.diagnostics()[0].where.file, (dir / "config.json").string());
    EXPECT_EQ(e.diagnostics()[0].where.line, 5);
    EXPECT_NE(e.diagnostics()[0].message.find("3 groups do not divide n_routed_experts = 256"),
              std::string::npos)
        << e.diagnostics()[0].message;
  }
  auto missing = errors_of(
      "[job]\nname = \"t\"\n[model]\nconfig = \"nope/config.json\"\n[[stages]]\nlayers = \"0\"\n");
  expect_error(missing, "model.config: no file", 4, 10);
}

TEST(TopologyErrors, UnknownPluginsSuggestWhatIsAvailable) {
  setenv("TROUPE_PLUGIN_PATH", std::getenv("TROUPE_TEST_PLUGIN_DIR"), 1);
  troupe::topology_load_options options;  // resolves plugins
  auto errors = errors_of(
      header + "\n[plugins]\nattention = \"test-atention\"\n\n[[stages]]\nlayers = \"0-3\"\n",
      options);
  expect_error(errors,
               "unknown plugin 'test-atention' for role attention (did you mean 'test-attention'?)",
               8, 1);

  troupe::plugin_registry registry(troupe::plugin_search_path::standard());
  options.registry = &registry;
  auto kind = errors_of(
      header + "\n[plugins]\nmoe = \"test-attention\"\n\n[[stages]]\nlayers = \"0-3\"\n", options);
  expect_error(kind, "a plugin of kind moe is needed here", 8);
  auto broken = errors_of(header +
                              "precision = \"fp8\"\n\n[plugins]\ngemm = "
                              "\"broken-init-fails\"\n\n[[stages]]\nlayers = \"0-3\"\n",
                          options);
  expect_error(broken, "init failed", 9);
  unsetenv("TROUPE_PLUGIN_PATH");

  // An explicitly named plugin that resolves is used; missing defaults are warnings, not errors.
  setenv("TROUPE_PLUGIN_PATH", std::getenv("TROUPE_TEST_PLUGIN_DIR"), 1);
  auto good = load_topology_text(
      header + "\n[plugins]\nattention = \"test-attention\"\n\n[[stages]]\nlayers = \"0-3\"\n",
      virtual_file(), options);
  unsetenv("TROUPE_PLUGIN_PATH");
  ASSERT_TRUE(good.topo.plugin_for(troupe::plugin_kind::attention)->resolved.has_value());
  // The default moe and mtp plugins come from the build tree (an uninstalled troupe finds them).
  ASSERT_TRUE(good.topo.plugin_for(troupe::plugin_kind::moe)->resolved.has_value());
  EXPECT_EQ(good.topo.plugin_for(troupe::plugin_kind::moe)->resolved->filename(),
            "libtroupe-moe.so");
  EXPECT_TRUE(good.warnings.empty());
}

TEST(TopologyErrors, ValueRangesInTrainDataAndMonitoring) {
  auto errors = errors_of(header + R"(
[[stages]]
layers = "0-3"

[train]
learning_rate = -1.0
beta2 = 1.5

[data]
fim_rate = 2.0
corpus = "no/such/corpus.txt"

[monitoring]
metrics = "127.0.0.1:99999"

[ema]
decay = 1.0
)");
  expect_error(errors, "monitoring.metrics = \"127.0.0.1:99999\" must be \"HOST:PORT\"", 19);
  // Range errors appear once the shape errors are fixed.
  auto ranges = errors_of(
      header +
      "\n[[stages]]\nlayers = \"0-3\"\n\n[train]\nlearning_rate = -1.0\nbeta2 = "
      "1.5\n\n[data]\nfim_rate = 2.0\ncorpus = \"no/such/corpus.txt\"\n\n[ema]\ndecay = 1.0\n");
  expect_error(ranges, "train.learning_rate must be positive, got -1", 11);
  expect_error(ranges, "train.beta2 must be in [0, 1), got 1.5", 12);
  expect_error(ranges, "data.fim_rate must be in [0, 1], got 2", 15);
  expect_error(ranges, "data.corpus: no file", 16);
  expect_error(ranges, "ema.decay must be in (0, 1), got 1", 19);
}

TEST(TopologyPlan, LinksFollowTheData) {
  auto loaded = troupe::load_topology(source_dir() / "topologies/pp2-ep4.toml", no_plugins());
  auto plan = troupe::plan_topology(loaded.topo);
  auto has_link = [&](const std::string& from, const std::string& to, const std::string& carries) {
    for (const auto& link : plan.links)
      if (link.from == from && link.to == to && link.carries == carries) return true;
    return false;
  };
  EXPECT_TRUE(has_link("stage0", "stage1", "activations"));
  EXPECT_TRUE(has_link("stage1", "stage0", "activation gradients"));
  EXPECT_TRUE(has_link("stage0", "shard3", "dispatch"));
  EXPECT_TRUE(has_link("shard3", "stage0", "combine"));
  EXPECT_TRUE(has_link("stage1", "balancer", "expert counts"));
  EXPECT_TRUE(has_link("balancer", "stage0", "router biases"));
  EXPECT_TRUE(has_link("coordinator", "ema", "control"));
  EXPECT_EQ(plan.find("stage0")->layers, (std::vector<int>{0, 1}));
  EXPECT_TRUE(plan.find("stage0")->embedding);
  EXPECT_TRUE(plan.find("stage1")->head);
  const std::string dot = troupe::to_dot(loaded.topo, plan);
  EXPECT_NE(dot.find("subgraph \"cluster_node0\""), std::string::npos);
  EXPECT_NE(dot.find("\"stage0\" -> \"stage1\" [label=\"activations\"]"), std::string::npos);
}

}  // namespace

namespace {

/// Loads the shipped tiny.toml with command-line overrides.
troupe::loaded_topology tiny_with(std::vector<std::string> overrides) {
  auto options = no_plugins();
  options.overrides = std::move(overrides);
  return troupe::load_topology(source_dir() / "topologies" / "tiny.toml", options);
}

std::vector<diagnostic> override_errors(std::vector<std::string> overrides) {
  try {
    tiny_with(std::move(overrides));
  } catch (const topology_error& e) {
    return e.diagnostics();
  }
  ADD_FAILURE() << "expected the overrides to fail";
  return {};
}

TEST(TopologyOverrides, SetValuesAreParsedAsTomlOrAsAWord) {
  const auto loaded =
      tiny_with({"train.steps=7", "train.learning_rate=2e-3", "schedule.kind=sequential",
                 "ema.enabled=false", "balancer.gamma=0", "expert_shards[1].experts=8-15",
                 "expert_shards[0].experts=[0,1,2,3,4,5,6,7]"});
  EXPECT_EQ(loaded.topo.train.steps, 7);
  EXPECT_DOUBLE_EQ(loaded.topo.train.learning_rate, 2e-3);
  EXPECT_EQ(loaded.topo.schedule.kind, troupe::schedule_kind::sequential);
  EXPECT_FALSE(loaded.topo.ema.enabled);
  EXPECT_EQ(loaded.topo.balancer.gamma, 0.0);
  EXPECT_EQ(loaded.topo.expert_shards[1].experts.front(), 8);
}

TEST(TopologyOverrides, AreValidatedLikeTheFileAndNamedInErrors) {
  {
    const auto d = override_errors({"parallel.pipeline=2"});
    ASSERT_FALSE(d.empty());
    EXPECT_EQ(d[0].where.file, "--set parallel.pipeline=2");
    EXPECT_NE(d[0].message.find("parallel.pipeline = 2 but 1 [[stages]]"), std::string::npos)
        << d[0].message;
  }
  {
    const auto d = override_errors({"train.stepz=3"});
    ASSERT_FALSE(d.empty());
    EXPECT_EQ(d[0].where.file, "--set train.stepz=3");
    EXPECT_NE(d[0].message.find("did you mean 'steps'"), std::string::npos) << d[0].message;
  }
  {
    const auto d = override_errors({"schedule.kind=gpipe"});
    ASSERT_FALSE(d.empty());
    EXPECT_NE(d[0].message.find("use one of: sequential, 1f1b, dualpipe"), std::string::npos)
        << d[0].message;
  }
  {
    const auto d = override_errors({"stages[3].layers=0"});
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].message, "'stages' has 1 entries (0-0)");
  }
  {
    const auto d = override_errors({"steps"});
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(to_string(d[0]),
              "--set steps:1:1: error: an override is KEY=VALUE, for example parallel.pipeline=2");
  }
}

}  // namespace
