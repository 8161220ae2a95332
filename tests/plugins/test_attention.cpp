// libtroupe-test-attention.so: a test-only layer plugin that exercises the whole ABI. It is a
// single-head causal self-attention block, y = softmax(mask(X Wq^T (X Wk^T)^T / sqrt(d))) X Wv^T
// Wo^T, with a hand-written backward. Every matrix product goes through the host's GEMM provider,
// softmax rows run on the host's thread pool, saved activations live in host-allocated memory
// keyed by micro-batch, and a forward-call counter is the plugin-internal state that
// export_state/import_state carry across a swap.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/abi/troupe_plugin.h"

namespace {

const troupe_host* host = nullptr;

struct saved_activations {
  DLDevice device{};
  const troupe_allocator* allocator = nullptr;
  std::int64_t tokens = 0;
  float* x = nullptr;        // [T, d]
  float* q = nullptr;        // [T, d]
  float* k = nullptr;        // [T, d]
  float* v = nullptr;        // [T, d]
  float* probs = nullptr;    // [T, T]
  float* context = nullptr;  // [T, d] = probs v
  // Filled by the input-gradient part for the weight-gradient part.
  float* d_q = nullptr;
  float* d_k = nullptr;
  float* d_v = nullptr;
  float* d_y = nullptr;
  bool input_part_done = false;

  ~saved_activations() {
    for (float* p : {x, q, k, v, probs, context, d_q, d_k, d_v, d_y})
      if (p != nullptr) allocator->release(allocator->self, device, p);
  }
};

struct instance_state {
  std::int64_t hidden = 0;
  std::vector<troupe_param_spec> specs;
  std::vector<std::string> names;
  const float* weights[4] = {};  // wq, wk, wv, wo: [d, d]
  float* grads[4] = {};
  std::map<std::int64_t, saved_activations> saved;
  std::uint64_t forward_calls = 0;
};

instance_state* state_of(troupe_instance* instance) {
  return reinterpret_cast<instance_state*>(instance);
}

troupe_status fail(troupe_error* error, troupe_status status, const std::string& message) {
  std::snprintf(error->message, sizeof(error->message), "%s", message.c_str());
  return status;
}

DLTensor matrix(float* data, std::int64_t rows, std::int64_t cols, std::int64_t* shape_storage) {
  shape_storage[0] = rows;
  shape_storage[1] = cols;
  DLTensor t{};
  t.data = data;
  t.device = {kDLCPU, 0};
  t.ndim = 2;
  t.dtype = {kDLFloat, 32, 1};
  t.shape = shape_storage;
  t.strides = nullptr;
  return t;
}

/// C[m,n] = alpha op(A) op(B) + beta C through the host's provider.
troupe_status gemm(const troupe_exec_context* context, troupe_gemm_pass pass, bool ta, bool tb,
                   const float* a, std::int64_t a_rows, std::int64_t a_cols, const float* b,
                   std::int64_t b_rows, std::int64_t b_cols, float* c, std::int64_t c_rows,
                   std::int64_t c_cols, float beta, int weight_operand, troupe_error* error) {
  std::int64_t sa[2], sb[2], sc[2];
  DLTensor ta_t = matrix(const_cast<float*>(a), a_rows, a_cols, sa);
  DLTensor tb_t = matrix(const_cast<float*>(b), b_rows, b_cols, sb);
  DLTensor tc_t = matrix(c, c_rows, c_cols, sc);
  troupe_gemm_call call{sizeof(troupe_gemm_call),
                        &ta_t,
                        &tb_t,
                        &tc_t,
                        ta ? 1 : 0,
                        tb ? 1 : 0,
                        1.0f,
                        beta,
                        pass,
                        weight_operand};
  return context->gemm->gemm(context->gemm->self, context, &call, error);
}

float* allocate(const troupe_exec_context* context, std::int64_t count) {
  return static_cast<float*>(context->allocator->allocate(
      context->allocator->self, context->device, static_cast<std::size_t>(count) * sizeof(float)));
}

bool is_matrix(const DLTensor& t, std::int64_t cols) {
  if (t.ndim != 2 || t.dtype.code != kDLFloat || t.dtype.bits != 32 || t.shape[1] != cols)
    return false;
  return t.strides == nullptr || (t.strides[1] == 1 && t.strides[0] == cols);
}

troupe_status plugin_init(const troupe_host* the_host, troupe_error*) {
  host = the_host;
  return TROUPE_STATUS_OK;
}

troupe_status plugin_create(const troupe_instance_config* config, troupe_instance** out,
                            troupe_error* error) {
  auto* state = new (std::nothrow) instance_state();
  if (state == nullptr) return fail(error, TROUPE_STATUS_OUT_OF_MEMORY, "no memory");
  try {
    auto model = nlohmann::json::parse(config->model_config_json);
    auto options = nlohmann::json::parse(config->options_json);
    state->hidden = options.value("hidden_size", model.value("hidden_size", std::int64_t{0}));
  } catch (const std::exception& e) {
    delete state;
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, std::string("bad config JSON: ") + e.what());
  }
  if (state->hidden <= 0) {
    delete state;
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "hidden_size must be a positive integer");
  }
  if (config->device.device_type != kDLCPU) {
    delete state;
    return fail(error, TROUPE_STATUS_UNSUPPORTED, "test-attention runs on the CPU only");
  }
  const std::string prefix = "self_attn.";
  state->names = {prefix + "q_proj.weight", prefix + "k_proj.weight", prefix + "v_proj.weight",
                  prefix + "o_proj.weight"};
  for (const auto& name : state->names) {
    troupe_param_spec spec{};
    spec.name = name.c_str();
    spec.ndim = 2;
    spec.shape[0] = state->hidden;
    spec.shape[1] = state->hidden;
    spec.dtype = {kDLFloat, 32, 1};
    spec.init = TROUPE_INIT_NORMAL;
    spec.init_scale = 1.0f / std::sqrt(static_cast<float>(state->hidden));
    spec.flags = TROUPE_PARAM_TRAINABLE;
    state->specs.push_back(spec);
  }
  *out = reinterpret_cast<troupe_instance*>(state);
  return TROUPE_STATUS_OK;
}

void plugin_destroy(troupe_instance* instance) {
  delete state_of(instance);
}

troupe_status plugin_parameters(troupe_instance* instance, const troupe_param_spec** specs,
                                std::int32_t* count, troupe_error*) {
  *specs = state_of(instance)->specs.data();
  *count = static_cast<std::int32_t>(state_of(instance)->specs.size());
  return TROUPE_STATUS_OK;
}

troupe_status plugin_bind(troupe_instance* instance, const DLTensor* params, const DLTensor* grads,
                          std::int32_t count, troupe_error* error) {
  auto* state = state_of(instance);
  if (count != 4) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "expects 4 parameters");
  for (int i = 0; i < 4; ++i) {
    if (!is_matrix(params[i], state->hidden) || params[i].shape[0] != state->hidden)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "parameter " + state->names[i] + " has the wrong shape");
    state->weights[i] = static_cast<const float*>(params[i].data);
    state->grads[i] = static_cast<float*>(grads[i].data);
  }
  return TROUPE_STATUS_OK;
}

troupe_status plugin_infer_outputs(troupe_instance* instance, const DLTensor* inputs,
                                   std::int32_t num_inputs, troupe_tensor_spec* outputs,
                                   std::int32_t* num_outputs, troupe_error* error) {
  auto* state = state_of(instance);
  if (num_inputs != 1 || !is_matrix(inputs[0], state->hidden))
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "expects one input x of shape [T, hidden_size] f32");
  if (*num_outputs < 1)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "room for one output needed");
  outputs[0] = troupe_tensor_spec{2, {inputs[0].shape[0], state->hidden, 0, 0}, {kDLFloat, 32, 1}};
  *num_outputs = 1;
  return TROUPE_STATUS_OK;
}

struct softmax_job {
  float* probs;
  std::int64_t tokens;
  float scale;
};

void causal_softmax_rows(void* arg, std::int64_t begin, std::int64_t end) {
  auto* job = static_cast<softmax_job*>(arg);
  for (std::int64_t row = begin; row < end; ++row) {
    float* p = job->probs + row * job->tokens;
    float max_logit = -INFINITY;
    for (std::int64_t col = 0; col <= row; ++col)
      max_logit = std::fmax(max_logit, p[col] * job->scale);
    float sum = 0.0f;
    for (std::int64_t col = 0; col <= row; ++col) {
      p[col] = std::exp(p[col] * job->scale - max_logit);
      sum += p[col];
    }
    for (std::int64_t col = 0; col <= row; ++col) p[col] /= sum;
    for (std::int64_t col = row + 1; col < job->tokens; ++col) p[col] = 0.0f;
  }
}

troupe_status plugin_forward(troupe_instance* instance, const troupe_exec_context* context,
                             std::int64_t micro_batch, const DLTensor* inputs,
                             std::int32_t num_inputs, DLTensor* outputs, std::int32_t num_outputs,
                             troupe_error* error) {
  auto* state = state_of(instance);
  if (num_inputs != 1 || num_outputs != 1 || !is_matrix(inputs[0], state->hidden))
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "expects x [T, hidden_size] -> y [T, hidden_size]");
  if (state->saved.count(micro_batch) != 0)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "micro-batch " + std::to_string(micro_batch) + " is already in flight");
  const std::int64_t t = inputs[0].shape[0], d = state->hidden;
  saved_activations& s = state->saved[micro_batch];
  s.device = context->device;
  s.allocator = context->allocator;
  s.tokens = t;
  s.x = allocate(context, t * d);
  s.q = allocate(context, t * d);
  s.k = allocate(context, t * d);
  s.v = allocate(context, t * d);
  s.probs = allocate(context, t * t);
  s.context = allocate(context, t * d);
  if (!s.x || !s.q || !s.k || !s.v || !s.probs || !s.context) {
    state->saved.erase(micro_batch);
    return fail(error, TROUPE_STATUS_OUT_OF_MEMORY, "cannot allocate saved activations");
  }
  std::memcpy(s.x, inputs[0].data, static_cast<std::size_t>(t * d) * sizeof(float));
  troupe_status status = TROUPE_STATUS_OK;
  float* projections[3] = {s.q, s.k, s.v};
  for (int i = 0; i < 3 && status == TROUPE_STATUS_OK; ++i)
    status = gemm(context, TROUPE_GEMM_FPROP, false, true, s.x, t, d, state->weights[i], d, d,
                  projections[i], t, d, 0.0f, 2, error);
  if (status == TROUPE_STATUS_OK)  // scores = q k^T
    status = gemm(context, TROUPE_GEMM_FPROP, false, true, s.q, t, d, s.k, t, d, s.probs, t, t,
                  0.0f, 0, error);
  if (status != TROUPE_STATUS_OK) {
    state->saved.erase(micro_batch);
    return status;
  }
  softmax_job job{s.probs, t, 1.0f / std::sqrt(static_cast<float>(d))};
  context->pool->parallel_for(context->pool->self, t, 1, &causal_softmax_rows, &job);
  status = gemm(context, TROUPE_GEMM_FPROP, false, false, s.probs, t, t, s.v, t, d, s.context, t, d,
                0.0f, 0, error);
  if (status == TROUPE_STATUS_OK)
    status = gemm(context, TROUPE_GEMM_FPROP, false, true, s.context, t, d, state->weights[3], d, d,
                  static_cast<float*>(outputs[0].data), t, d, 0.0f, 2, error);
  if (status != TROUPE_STATUS_OK) {
    state->saved.erase(micro_batch);
    return status;
  }
  ++state->forward_calls;
  return TROUPE_STATUS_OK;
}

/// Input-gradient part: dX += dQ Wq + dK Wk + dV Wv, keeping dQ, dK, dV, dY for the weight part.
troupe_status backward_input(instance_state* state, saved_activations& s,
                             const troupe_exec_context* context, const float* d_y, float* d_x,
                             troupe_error* error) {
  const std::int64_t t = s.tokens, d = state->hidden;
  s.d_y = allocate(context, t * d);
  s.d_q = allocate(context, t * d);
  s.d_k = allocate(context, t * d);
  s.d_v = allocate(context, t * d);
  float* d_context = allocate(context, t * d);
  float* d_probs = allocate(context, t * t);
  auto release_temporaries = [&] {
    if (d_context)
      context->allocator->release(context->allocator->self, context->device, d_context);
    if (d_probs) context->allocator->release(context->allocator->self, context->device, d_probs);
  };
  if (!s.d_y || !s.d_q || !s.d_k || !s.d_v || !d_context || !d_probs) {
    release_temporaries();
    return fail(error, TROUPE_STATUS_OUT_OF_MEMORY, "cannot allocate gradient buffers");
  }
  std::memcpy(s.d_y, d_y, static_cast<std::size_t>(t * d) * sizeof(float));
  troupe_status status =
      gemm(context, TROUPE_GEMM_DGRAD, false, false, d_y, t, d, state->weights[3], d, d, d_context,
           t, d, 0.0f, 2, error);  // dC = dY Wo
  if (status == TROUPE_STATUS_OK)  // dP = dC V^T
    status = gemm(context, TROUPE_GEMM_DGRAD, false, true, d_context, t, d, s.v, t, d, d_probs, t,
                  t, 0.0f, 0, error);
  if (status == TROUPE_STATUS_OK)  // dV = P^T dC
    status = gemm(context, TROUPE_GEMM_DGRAD, true, false, s.probs, t, t, d_context, t, d, s.d_v, t,
                  d, 0.0f, 0, error);
  if (status == TROUPE_STATUS_OK) {
    // Softmax backward, then the score scale: dScores = scale * P (dP - rowsum(dP P)).
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    for (std::int64_t row = 0; row < t; ++row) {
      float* dp = d_probs + row * t;
      const float* p = s.probs + row * t;
      float dot = 0.0f;
      for (std::int64_t col = 0; col <= row; ++col) dot += dp[col] * p[col];
      for (std::int64_t col = 0; col < t; ++col)
        dp[col] = col <= row ? scale * p[col] * (dp[col] - dot) : 0.0f;
    }
    status = gemm(context, TROUPE_GEMM_DGRAD, false, false, d_probs, t, t, s.k, t, d, s.d_q, t, d,
                  0.0f, 0, error);  // dQ = dS K
  }
  if (status == TROUPE_STATUS_OK)  // dK = dS^T Q
    status = gemm(context, TROUPE_GEMM_DGRAD, true, false, d_probs, t, t, s.q, t, d, s.d_k, t, d,
                  0.0f, 0, error);
  const float* projection_grads[3] = {s.d_q, s.d_k, s.d_v};
  for (int i = 0; i < 3 && status == TROUPE_STATUS_OK; ++i)  // dX += dQ Wq + dK Wk + dV Wv
    status = gemm(context, TROUPE_GEMM_DGRAD, false, false, projection_grads[i], t, d,
                  state->weights[i], d, d, d_x, t, d, 1.0f, 2, error);
  release_temporaries();
  s.input_part_done = status == TROUPE_STATUS_OK;
  return status;
}

/// Weight-gradient part: dW += dProjection^T X for q, k, v and dWo += dY^T C.
troupe_status backward_weight(instance_state* state, saved_activations& s,
                              const troupe_exec_context* context, troupe_error* error) {
  const std::int64_t t = s.tokens, d = state->hidden;
  const float* projection_grads[3] = {s.d_q, s.d_k, s.d_v};
  troupe_status status = TROUPE_STATUS_OK;
  for (int i = 0; i < 3 && status == TROUPE_STATUS_OK; ++i)
    status = gemm(context, TROUPE_GEMM_WGRAD, true, false, projection_grads[i], t, d, s.x, t, d,
                  state->grads[i], d, d, 1.0f, 0, error);
  if (status == TROUPE_STATUS_OK)
    status = gemm(context, TROUPE_GEMM_WGRAD, true, false, s.d_y, t, d, s.context, t, d,
                  state->grads[3], d, d, 1.0f, 0, error);
  return status;
}

troupe_status plugin_backward(troupe_instance* instance, const troupe_exec_context* context,
                              std::int64_t micro_batch, troupe_backward_part part,
                              const DLTensor* output_grads, std::int32_t num_output_grads,
                              DLTensor* input_grads, std::int32_t num_input_grads,
                              troupe_error* error) {
  auto* state = state_of(instance);
  auto found = state->saved.find(micro_batch);
  if (found == state->saved.end())
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "no forward saved for micro-batch " + std::to_string(micro_batch));
  saved_activations& s = found->second;
  troupe_status status = TROUPE_STATUS_OK;
  if (part != TROUPE_BACKWARD_WEIGHT) {
    if (num_output_grads != 1 || num_input_grads != 1)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "expects dy -> dx");
    if (s.input_part_done)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "input gradients of this micro-batch are done already");
    status = backward_input(state, s, context, static_cast<const float*>(output_grads[0].data),
                            static_cast<float*>(input_grads[0].data), error);
  } else if (!s.input_part_done) {
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "the weight-gradient part needs the input-gradient part first");
  }
  if (status == TROUPE_STATUS_OK && part != TROUPE_BACKWARD_INPUT) {
    status = backward_weight(state, s, context, error);
    state->saved.erase(found);
  }
  return status;
}

void plugin_forget(troupe_instance* instance, std::int64_t micro_batch) {
  state_of(instance)->saved.erase(micro_batch);
}

troupe_status plugin_export_state(troupe_instance* instance, troupe_blob* blob,
                                  troupe_error* error) {
  auto* bytes = static_cast<std::uint64_t*>(std::malloc(sizeof(std::uint64_t)));
  if (bytes == nullptr) return fail(error, TROUPE_STATUS_OUT_OF_MEMORY, "no memory");
  *bytes = state_of(instance)->forward_calls;
  *blob = troupe_blob{bytes, sizeof(std::uint64_t), &std::free};
  return TROUPE_STATUS_OK;
}

troupe_status plugin_import_state(troupe_instance* instance, const void* data, std::size_t size,
                                  troupe_error* error) {
  if (size != sizeof(std::uint64_t))
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "state must be 8 bytes (a forward-call counter), got " + std::to_string(size));
  std::memcpy(&state_of(instance)->forward_calls, data, sizeof(std::uint64_t));
  return TROUPE_STATUS_OK;
}

// The impostor build (tests/plugins/impostor) is this plugin under another name, in a file named
// for a third: libtroupe-moe.so that calls itself "mla".
#ifndef TEST_ATTENTION_NAME
#define TEST_ATTENTION_NAME "test-attention"
#endif

const troupe_plugin descriptor = {
    TROUPE_PLUGIN_ABI_MAJOR,
    TROUPE_PLUGIN_ABI_MINOR,
    sizeof(troupe_plugin),
    TROUPE_PLUGIN_KIND_ATTENTION,
    TEST_ATTENTION_NAME,
    "1.0.0",
    "test-only single-head causal attention exercising the plugin ABI",
    &plugin_init,
    &plugin_create,
    &plugin_destroy,
    &plugin_parameters,
    &plugin_bind,
    &plugin_infer_outputs,
    &plugin_forward,
    &plugin_backward,
    &plugin_forget,
    &plugin_export_state,
    &plugin_import_state,
    nullptr,  // gemm_provider
    nullptr,  // statistics
    nullptr,  // forward_cached
};

}  // namespace

extern "C" TROUPE_PLUGIN_EXPORT const troupe_plugin* troupe_plugin_entry(void) {
  return &descriptor;
}
