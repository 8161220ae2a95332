#include "kernels/cuda/attention_cudnn.hpp"

#include "kernels/cuda/check.cuh"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDNN_FRONTEND

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

// NOTES: cuDNN is loaded with dlopen when first asked for (the frontend's dynamic loading): a
// machine without it runs troupe's own BF16 kernels, and the binaries carry no libcudnn. In that
// mode the frontend reaches the few CUDA runtime functions it calls through the shared
// libcudart.so.13 next to cuDNN (troupe's own runtime is linked statically); both drive the
// same primary context.
#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>
#include <fmt/format.h>

#include "kernels/cuda/attention_packing.hpp"

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the frontend's dlsym handle (cudnn_frontend_shim.h)
}  // namespace cudnn_frontend

namespace troupe::kernels::cuda {

namespace {

namespace fe = cudnn_frontend;

/// The tensors' ids in the graphs' variant packs.
enum tensor_id : std::int64_t { q_id = 1, k_id, v_id, o_id, stats_id, d_o_id, dq_id, dk_id, dv_id };

struct graph_key {
  int device = 0;
  bool backward = false;
  std::int64_t batch = 0, heads = 0, length = 0, qk = 0, v = 0;
  std::uint32_t scale_bits = 0;
  auto tie() const { return std::tie(device, backward, batch, heads, length, qk, v, scale_bits); }
  bool operator<(const graph_key& other) const { return tie() < other.tie(); }
};

struct built_graph {
  std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN has no plan for this problem
  std::int64_t workspace = 0;
  std::string why_not;
};

/// The most problems a device builds graphs for; problems past them run troupe's own kernels
/// (a build takes up to seconds: a stream of distinct sequence lengths must not build one per
/// call). A refused problem is remembered without a graph.
constexpr std::size_t max_graphs_per_device = 64;

/// One device's handle and graphs. NOTES: the lock is held while a graph is built (the first
/// call of a problem) and around set_stream + execute, which must go together because the
/// handle's stream is shared by every caller; executing only enqueues kernels.
struct device_state {
  std::mutex lock;
  cudnnHandle_t handle = nullptr;
  std::map<graph_key, built_graph> graphs;
};

/// Whether cuDNN loaded (once per process), and each device's state.
struct library {
  std::once_flag loaded;
  std::string load_error;  // "" when cuDNN loaded
  std::mutex devices_lock;
  std::map<int, std::unique_ptr<device_state>> devices;
};

library& state() {
  static auto* instance = new library();  // never destroyed: CUDA may be gone at exit
  return *instance;
}

/// TROUPE_ATTENTION: unset or "cudnn" (cuDNN where it runs), "own" (troupe's kernels only).
bool disabled_by_environment() {
  static const bool disabled = [] {
    const char* choice = std::getenv("TROUPE_ATTENTION");
    if (choice == nullptr || std::strcmp(choice, "cudnn") == 0) return false;
    if (std::strcmp(choice, "own") == 0) return true;
    fail_kernel(fmt::format(
        "TROUPE_ATTENTION={}: use \"cudnn\" (the default: cuDNN's fused attention where it runs) "
        "or \"own\" (troupe's kernels only)",
        choice));
  }();
  return disabled;
}

/// Loads cuDNN once per process; "" on success, else why not (said once on stderr).
const std::string& load(library& lib) {
  std::call_once(lib.loaded, [&] {
    std::string first_error;
    for (const char* name : {"libcudnn.so.9", "libcudnn_graph.so.9"}) {
      if (void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
        fe::cudnn_dlhandle = handle;
        break;
      }
      if (first_error.empty()) first_error = dlerror();
    }
    if (fe::cudnn_dlhandle == nullptr) {
      lib.load_error = fmt::format(
          "cannot load cuDNN 9 (libcudnn.so.9: {}); put its lib folder (PyTorch's "
          "nvidia/cudnn/lib, or the CUDA toolkit's) on LD_LIBRARY_PATH",
          first_error);
    } else {
      try {
        const std::size_t version = fe::detail::get_backend_version();
        if (version < 90000)
          lib.load_error = fmt::format(
              "the cuDNN loaded is {}, older than 9.0; put cuDNN 9's lib folder first on "
              "LD_LIBRARY_PATH",
              version);
      } catch (const std::exception& e) {
        lib.load_error = fmt::format("cuDNN loaded but unusable: {}", e.what());
      }
    }
    if (!lib.load_error.empty())
      std::fprintf(stderr, "troupe: %s; troupe's own attention kernels run instead\n",
                   lib.load_error.c_str());
  });
  return lib.load_error;
}

device_state& device_for(library& lib, int device) {
  const std::lock_guard<std::mutex> hold(lib.devices_lock);
  auto& slot = lib.devices[device];
  if (!slot) slot = std::make_unique<device_state>();
  return *slot;
}

/// The device's handle, created on first use. Called with the device's lock held.
cudnnHandle_t handle_for(device_state& d, int device) {
  if (d.handle != nullptr) return d.handle;
  const cudnnStatus_t status = fe::detail::create_handle(&d.handle);
  if (status != CUDNN_STATUS_SUCCESS) {
    d.handle = nullptr;
    fail_kernel(fmt::format("cuDNN: cannot create a handle on cuda:{}: {}", device,
                            fe::detail::get_error_string(status)));
  }
  return d.handle;
}

std::shared_ptr<fe::graph::Tensor_attributes> packed_tensor(fe::graph::Graph& graph,
                                                            const char* name, std::int64_t id,
                                                            const graph_key& key,
                                                            std::int64_t width) {
  return graph.tensor(
      fe::graph::Tensor_attributes()
          .set_name(name)
          .set_uid(id)
          .set_dim({key.batch, key.heads, key.length, width})
          .set_stride({key.heads * key.length * width, key.length * width, width, 1}));
}

void packed_output(const std::shared_ptr<fe::graph::Tensor_attributes>& t, std::int64_t id,
                   const graph_key& key, std::int64_t width) {
  t->set_output(true)
      .set_uid(id)
      .set_dim({key.batch, key.heads, key.length, width})
      .set_stride({key.heads * key.length * width, key.length * width, width, 1});
}

std::vector<std::int64_t> stats_dims(const graph_key& key) {
  return {key.batch, key.heads, key.length, 1};
}
std::vector<std::int64_t> stats_strides(const graph_key& key) {
  return {key.heads * key.length, key.length, 1, 1};
}

/// The forward or backward graph of `key`: causal, the given scale, BF16 in and out, FP32
/// inside; the log-sum-exp (natural log, as troupe's lse) as FP32 [B, H, L].
built_graph build(cudnnHandle_t handle, const graph_key& key, float scale) {
  built_graph result;
  auto graph = std::make_shared<fe::graph::Graph>();
  graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto q = packed_tensor(*graph, "Q", q_id, key, key.qk);
  auto k = packed_tensor(*graph, "K", k_id, key, key.qk);
  auto v = packed_tensor(*graph, "V", v_id, key, key.v);
  if (!key.backward) {
    auto options = fe::graph::SDPA_attributes()
                       .set_name("troupe_attention")
                       .set_generate_stats(true)
                       .set_causal_mask(true)
                       .set_attn_scale(scale);
    auto [o, stats] = graph->sdpa(q, k, v, options);
    packed_output(o, o_id, key, key.v);
    stats->set_output(true)
        .set_uid(stats_id)
        .set_data_type(fe::DataType_t::FLOAT)
        .set_dim(stats_dims(key))
        .set_stride(stats_strides(key));
  } else {
    auto o = packed_tensor(*graph, "O", o_id, key, key.v);
    auto d_o = packed_tensor(*graph, "dO", d_o_id, key, key.v);
    auto stats = graph->tensor(fe::graph::Tensor_attributes()
                                   .set_name("Stats")
                                   .set_uid(stats_id)
                                   .set_data_type(fe::DataType_t::FLOAT)
                                   .set_dim(stats_dims(key))
                                   .set_stride(stats_strides(key)));
    // NOTES: cuDNN's backward adds dQ up with atomics on Hopper, so a bf16 run through it is not
    // bit-for-bit repeatable (troupe's own kernels are: TROUPE_ATTENTION=own); its deterministic
    // algorithm (set_deterministic_algorithm) needs a [B, H, L, L] dP workspace below cuDNN 9.25
    // and has not been measured here.
    auto options = fe::graph::SDPA_backward_attributes()
                       .set_name("troupe_attention_backward")
                       .set_causal_mask(true)
                       .set_attn_scale(scale);
    auto [dq, dk, dv] = graph->sdpa_backward(q, k, v, o, d_o, stats, options);
    packed_output(dq, dq_id, key, key.qk);
    packed_output(dk, dk_id, key, key.qk);
    packed_output(dv, dv_id, key, key.v);
  }
  const auto step = [&](fe::error_t status, const char* what) {
    if (status.is_good() || !result.why_not.empty()) return;
    result.why_not = fmt::format("{}: {}", what, status.get_message());
  };
  step(graph->validate(), "validate");
  if (result.why_not.empty()) step(graph->build_operation_graph(handle), "operation graph");
  if (result.why_not.empty())
    step(graph->create_execution_plans({fe::HeurMode_t::A}), "execution plans");
  if (result.why_not.empty()) step(graph->check_support(handle), "support");
  if (result.why_not.empty()) step(graph->build_plans(handle), "plans");
  if (result.why_not.empty()) step(graph->get_workspace_size(result.workspace), "workspace");
  if (result.why_not.empty()) result.graph = std::move(graph);
  return result;
}

graph_key key_of(const attention_problem& p, bool backward) {
  int device = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&device));
  std::uint32_t bits = 0;
  std::memcpy(&bits, &p.scale, sizeof(bits));
  return {device, backward, p.batch, p.heads, p.length, p.qk_dim, p.v_dim, bits};
}

/// The problem's graph on device `key.device`, built on first use; null (with a one-line notice
/// on stderr, once per problem) when cuDNN cannot run it. Called with the device's lock held.
const built_graph* graph_for(device_state& d, const attention_problem& p, const graph_key& key) {
  auto found = d.graphs.find(key);
  if (found == d.graphs.end()) {
    built_graph built;
    const auto built_so_far = static_cast<std::size_t>(std::count_if(
        d.graphs.begin(), d.graphs.end(), [](const auto& g) { return g.second.graph != nullptr; }));
    if (built_so_far >= max_graphs_per_device) {
      built.why_not = fmt::format("cuda:{} keeps graphs for {} problems already", key.device,
                                  max_graphs_per_device);
    } else {
      try {
        built = build(handle_for(d, key.device), key, p.scale);
      } catch (const std::exception& e) {
        built.why_not = e.what();
      }
    }
    if (built.graph == nullptr)
      std::fprintf(stderr,
                   "troupe: cuDNN's fused attention %s does not run batch %lld, %lld heads, %lld "
                   "tokens, qk %lld, v %lld (%s); troupe's own kernels run it\n",
                   key.backward ? "backward" : "forward", static_cast<long long>(p.batch),
                   static_cast<long long>(p.heads), static_cast<long long>(p.length),
                   static_cast<long long>(p.qk_dim), static_cast<long long>(p.v_dim),
                   built.why_not.c_str());
    found = d.graphs.emplace(key, std::move(built)).first;
  }
  return found->second.graph != nullptr ? &found->second : nullptr;
}

bool shape_packs(const attention_problem& p) {
  return p.qk_dim % 8 == 0 && p.v_dim % 8 == 0 && p.qk_dim <= max_attention_head_dim &&
         p.v_dim <= max_attention_head_dim && p.rope_dim >= 0 && p.rope_dim < p.qk_dim &&
         p.rope_dim % 4 == 0 && p.batch > 0 && p.heads > 0 && p.length > 0;
}

std::size_t round_up(std::size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

/// The staging buffer carved into the packed BF16 operands and results (256-byte aligned
/// regions), cuDNN's workspace behind them: forward q, k, v, o; backward also dO, dq, dk, dv.
struct operand_layout {
  operand_layout(const attention_problem& p, void* staging, bool backward)
      : qk(static_cast<int>(p.qk_dim)), vd(static_cast<int>(p.v_dim)), base(staging) {
    const std::int64_t rows = attention_slice_rows(p);
    q = take(rows * qk), k = take(rows * qk), v = take(rows * vd), o = take(rows * vd);
    if (backward)
      d_o = take(rows * vd), dq = take(rows * qk), dk = take(rows * qk), dv = take(rows * vd);
    workspace = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(base) + bytes);
  }
  /// q, k (the rope key behind the nope columns), v, and o and dO where given, in one launch.
  void pack(const attention_problem& p, attention_operand q_in, attention_operand k_in,
            attention_operand rope_in, attention_operand v_in, const attention_operand* o_in,
            const attention_operand* d_o_in, void* stream) const {
    const int rope = static_cast<int>(p.rope_dim);
    attention_pack jobs[max_attention_pack_jobs];
    int count = 0;
    jobs[count++] = {q_in, qk, q, qk, 0};
    jobs[count++] = {k_in, qk - rope, k, qk, 0};
    if (rope > 0) jobs[count++] = {rope_in, rope, k, qk, qk - rope};
    jobs[count++] = {v_in, vd, v, vd, 0};
    if (o_in != nullptr) jobs[count++] = {*o_in, vd, o, vd, 0};
    if (d_o_in != nullptr) jobs[count++] = {*d_o_in, vd, d_o, vd, 0};
    pack_attention_bf16(p, jobs, count, stream);
  }
  int qk, vd;
  std::uint16_t *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *d_o = nullptr,
                *dq = nullptr, *dk = nullptr, *dv = nullptr;
  void* workspace = nullptr;
  std::size_t bytes = 0;  ///< of the packed regions, the workspace not included

 private:
  std::uint16_t* take(std::int64_t elements) {
    auto* result = reinterpret_cast<std::uint16_t*>(reinterpret_cast<std::uintptr_t>(base) + bytes);
    bytes += round_up(static_cast<std::size_t>(elements) * 2);
    return result;
  }
  void* base;
};

/// The problem's graph on the current device, or a failure naming `function` and what to do.
/// Called with the device's lock held.
const built_graph& graph_or_fail(device_state& d, const attention_problem& p, bool backward,
                                 const void* staging, const char* function) {
  require(shape_packs(p), function,
          "qk and v must be multiples of 8 up to 256 and the rope key's width a multiple of 4 "
          "below qk");
  require(staging != nullptr, function,
          "no staging buffer: pass attention_cudnn_staging_bytes(problem, backward) bytes");
  const std::string& not_loaded = load(state());
  require(not_loaded.empty(), function, not_loaded);
  const built_graph* g = graph_for(d, p, key_of(p, backward));
  require(g != nullptr, function,
          "cuDNN does not run this problem (stderr says why); ask attention_cudnn_supported "
          "first");
  return *g;
}

void execute(device_state& d, int device, const built_graph& g,
             std::unordered_map<std::int64_t, void*>& pack, void* workspace, cudaStream_t stream) {
  cudnnHandle_t handle = handle_for(d, device);
  const cudnnStatus_t set = fe::detail::set_stream(handle, stream);
  if (set != CUDNN_STATUS_SUCCESS)
    fail_kernel(fmt::format("cuDNN: cannot set the stream on cuda:{}: {}", device,
                            fe::detail::get_error_string(set)));
  fe::error_t status = g.graph->execute(handle, pack, workspace);
  if (!status.is_good())
    fail_kernel(
        fmt::format("cuDNN's fused attention failed on cuda:{}: {}", device, status.get_message()));
}

/// What a call holds while it runs: the current device's state, locked.
struct locked_device {
  locked_device() : lib(state()) {
    TROUPE_CUDA_CHECK(cudaGetDevice(&ordinal));
    d = &device_for(lib, ordinal);
    hold = std::unique_lock<std::mutex>(d->lock);
  }
  library& lib;
  int ordinal = 0;
  device_state* d = nullptr;
  std::unique_lock<std::mutex> hold;
};

}  // namespace

bool attention_cudnn_supported(const attention_problem& problem, bool backward) {
  if (disabled_by_environment() || !shape_packs(problem) || !load(state()).empty()) return false;
  locked_device device;
  return graph_for(*device.d, problem, key_of(problem, backward)) != nullptr;
}

std::size_t attention_cudnn_staging_bytes(const attention_problem& problem, bool backward) {
  if (!attention_cudnn_supported(problem, backward)) return 0;
  locked_device device;
  const built_graph* g = graph_for(*device.d, problem, key_of(problem, backward));
  // Laid out over a null base only to add up the regions' sizes.
  const operand_layout layout(problem, nullptr, backward);
  return layout.bytes + round_up(static_cast<std::size_t>(g->workspace));
}

void attention_forward_cudnn(const attention_problem& p, attention_operand q, attention_operand k,
                             attention_operand key_rope, attention_operand v, attention_result o,
                             float* lse, void* stream, void* staging) {
  locked_device device;
  const built_graph& g = graph_or_fail(*device.d, p, false, staging, "attention_forward_cudnn");
  operand_layout in(p, staging, false);
  in.pack(p, q, k, key_rope, v, nullptr, nullptr, stream);
  std::unordered_map<std::int64_t, void*> pack{
      {q_id, in.q}, {k_id, in.k}, {v_id, in.v}, {o_id, in.o}, {stats_id, lse}};
  execute(*device.d, device.ordinal, g, pack, in.workspace, as_stream(stream));
  const attention_unpack out{in.o, in.vd, 0, in.vd, o};
  unpack_attention_bf16(p, &out, 1, stream);
}

void attention_backward_cudnn(const attention_problem& p, attention_operand q, attention_operand k,
                              attention_operand key_rope, attention_operand v, attention_operand o,
                              attention_operand d_o, const float* lse, attention_result dq,
                              attention_result dk, attention_result d_key_rope, attention_result dv,
                              void* stream, void* staging) {
  require(p.rope_dim == 0 || d_key_rope.data != nullptr, "attention_backward_cudnn",
          "a rope key needs a tensor for its gradient");
  locked_device device;
  const built_graph& g = graph_or_fail(*device.d, p, true, staging, "attention_backward_cudnn");
  operand_layout in(p, staging, true);
  in.pack(p, q, k, key_rope, v, &o, &d_o, stream);
  std::unordered_map<std::int64_t, void*> pack{
      {q_id, in.q},   {k_id, in.k},     {v_id, in.v},
      {o_id, in.o},   {d_o_id, in.d_o}, {dq_id, in.dq},
      {dk_id, in.dk}, {dv_id, in.dv},   {stats_id, const_cast<float*>(lse)}};
  execute(*device.d, device.ordinal, g, pack, in.workspace, as_stream(stream));
  const int qk = in.qk, vd = in.vd, rope = static_cast<int>(p.rope_dim), nope = qk - rope;
  attention_unpack out[max_attention_pack_jobs];
  int count = 0;
  out[count++] = {in.dq, qk, 0, qk, dq};
  out[count++] = {in.dk, qk, 0, nope, dk};
  if (rope > 0) out[count++] = {in.dk, qk, nope, rope, d_key_rope};
  out[count++] = {in.dv, vd, 0, vd, dv};
  unpack_attention_bf16(p, out, count, stream);
}

}  // namespace troupe::kernels::cuda

#else  // built without the cuDNN frontend's headers: never supported

namespace troupe::kernels::cuda {

bool attention_cudnn_supported(const attention_problem&, bool) {
  return false;
}

std::size_t attention_cudnn_staging_bytes(const attention_problem&, bool) {
  return 0;
}

void attention_forward_cudnn(const attention_problem&, attention_operand, attention_operand,
                             attention_operand, attention_operand, attention_result, float*, void*,
                             void*) {
  fail_kernel("attention_forward_cudnn: this build has no cuDNN attention (no cuDNN frontend)");
}

void attention_backward_cudnn(const attention_problem&, attention_operand, attention_operand,
                              attention_operand, attention_operand, attention_operand,
                              attention_operand, const float*, attention_result, attention_result,
                              attention_result, attention_result, void*, void*) {
  fail_kernel("attention_backward_cudnn: this build has no cuDNN attention (no cuDNN frontend)");
}

}  // namespace troupe::kernels::cuda

#endif
