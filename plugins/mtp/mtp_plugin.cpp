// libtroupe-mtp.so: the input side of one DeepSeek-V3 multi-token-prediction module.
//
// Module k (k = 1..D) predicts the token k+1 positions ahead. Its input for position i combines
// the previous depth's representation h^{k-1}_i (the main model's last hidden state for k = 1)
// with the embedding of token t_{i+k}:
//   h'_i = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)])      (embedding first, as stored)
// The runtime then runs one transformer block (the attention and moe plugins at layer
// num_hidden_layers + k - 1), the module's final norm and the shared output head; the loss is
// lambda/D * sum_k CE_k. This plugin is the part that only MTP has.
//   inputs:       h_prev [batch, length, hidden], embedded [batch, length, hidden]
//   outputs:      h' [batch, length, hidden]
//   input grads:  d_h_prev, d_embedded (both accumulated)
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/cpu/linear.hpp"
#include "plugins/common/device_ops.hpp"
#include "plugins/common/layer_entry.hpp"
#include "plugins/common/model_shape.hpp"
#include "plugins/common/split_backward.hpp"

namespace {

using namespace troupe::plugin;

class mtp_module {
 public:
  explicit mtp_module(const model_shape& c)
      : hidden_(c.hidden_size), eps_(static_cast<float>(c.rms_norm_eps)) {
    enorm_ = parameters_.add("enorm.weight", {hidden_}, TROUPE_INIT_ONES, 0.0f);
    hnorm_ = parameters_.add("hnorm.weight", {hidden_}, TROUPE_INIT_ONES, 0.0f);
    eh_proj_ = parameters_.add("eh_proj.weight", {hidden_, 2 * hidden_}, TROUPE_INIT_NORMAL, 0.02f);
  }

  const parameter_list& parameters() const { return parameters_; }
  std::int64_t hidden() const { return hidden_; }

  troupe_status bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                     troupe_error* error) {
    TROUPE_TRY(parameters_.check_bound(params, count, error));
    for (std::size_t i = 0; i < 3; ++i) {
      weight_[i] = data_of(params[i]);
      grad_[i] = grads[i].data != nullptr ? data_of(grads[i]) : nullptr;
    }
    bound_ = true;
    return TROUPE_STATUS_OK;
  }

  troupe_status forward(const troupe_exec_context* context, std::int64_t micro_batch,
                        const DLTensor& h_prev, const DLTensor& embedded, const DLTensor& out,
                        troupe_error* error) {
    if (!bound_) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "forward before bind");
    activation_shape shape, other;
    TROUPE_TRY(check_activation(h_prev, hidden_, "h_prev", shape, error, context));
    TROUPE_TRY(check_activation(embedded, hidden_, "embedded", other, error, context));
    if (other.tokens() != shape.tokens())
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "h_prev and embedded differ in shape");
    TROUPE_TRY(check_activation(out, hidden_, "the MTP output", other, error, context));
    saved* s = saved_.start(micro_batch, error);
    if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
    return guarded(error, [&] {
      const std::int64_t t = shape.tokens(), h = hidden_;
      s->shape = shape;
      s->h_prev = data_of(h_prev);
      s->embedded = data_of(embedded);
      s->joined.assign(context, static_cast<std::size_t>(t * 2 * h));  // [enorm(emb) | hnorm(h)]
      s->rstd.assign(context, static_cast<std::size_t>(2 * t));        // enorm's rows, then hnorm's
      ops::rmsnorm_forward(context, s->embedded, h, weight_[enorm_], s->joined.data(), 2 * h,
                           s->rstd.data(), t, h, eps_);
      ops::rmsnorm_forward(context, s->h_prev, h, weight_[hnorm_], s->joined.data() + h, 2 * h,
                           s->rstd.data() + t, t, h, eps_);
      const troupe_status status =
          troupe::kernels::linear_forward(context, s->joined.data(), 2 * h, weight_[eh_proj_],
                                          data_of(out), h, t, 2 * h, h, false, error);
      if (status != TROUPE_STATUS_OK) saved_.release(micro_batch);
      return status;
    });
  }

  troupe_status backward(const troupe_exec_context* context, std::int64_t micro_batch,
                         troupe_backward_part part, const DLTensor* d_out, const DLTensor* d_h_prev,
                         const DLTensor* d_embedded, troupe_error* error) {
    return saved_.backward(
        micro_batch, part, error,
        [&](saved& s) -> troupe_status {
          if (d_out == nullptr || d_h_prev == nullptr || d_embedded == nullptr)
            return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                        "backward needs d_out, d_h_prev and d_embedded");
          activation_shape shape;
          TROUPE_TRY(check_activation(*d_out, hidden_, "d_out", shape, error, context));
          TROUPE_TRY(check_activation(*d_h_prev, hidden_, "d_h_prev", shape, error, context));
          TROUPE_TRY(check_activation(*d_embedded, hidden_, "d_embedded", shape, error, context));
          return guarded(error, [&] {
            return backward_input(context, s, *d_out, *d_h_prev, *d_embedded, error);
          });
        },
        [&](saved& s) {
          const std::int64_t t = s.shape.tokens(), h = hidden_;
          return troupe::kernels::linear_backward(context, s.d_out.data(), h, s.joined.data(),
                                                  2 * h, weight_[eh_proj_], nullptr, 0,
                                                  grad_[eh_proj_], t, 2 * h, h, error);
        });
  }

  void forget(std::int64_t micro_batch) { saved_.release(micro_batch); }

 private:
  struct saved {
    activation_shape shape;
    const float* h_prev = nullptr;
    const float* embedded = nullptr;
    buffer joined, rstd, d_out;
  };

  /// dL/d(embedded) and dL/d(h_prev) through eh_proj and the two norms; keeps d_out for the
  /// weight part.
  troupe_status backward_input(const troupe_exec_context* context, saved& s, const DLTensor& d_out,
                               const DLTensor& d_h_prev, const DLTensor& d_embedded,
                               troupe_error* error) {
    const std::int64_t t = s.shape.tokens(), h = hidden_;
    s.d_out.assign_copy(context, data_of(d_out), static_cast<std::size_t>(t * h));
    buffer d_joined;
    d_joined.assign(context, static_cast<std::size_t>(t * 2 * h));
    TROUPE_TRY(troupe::kernels::linear_backward(context, s.d_out.data(), h, nullptr, 0,
                                                weight_[eh_proj_], d_joined.data(), 2 * h, nullptr,
                                                t, 2 * h, h, error));
    ops::rmsnorm_backward(context, d_joined.data(), 2 * h, s.embedded, h, weight_[enorm_],
                          s.rstd.data(), data_of(d_embedded), grad_[enorm_], t, h);
    ops::rmsnorm_backward(context, d_joined.data() + h, 2 * h, s.h_prev, h, weight_[hnorm_],
                          s.rstd.data() + t, data_of(d_h_prev), grad_[hnorm_], t, h);
    return TROUPE_STATUS_OK;
  }

  std::int64_t hidden_;
  float eps_;
  parameter_list parameters_;
  std::size_t enorm_, hnorm_, eh_proj_;
  float* weight_[3] = {};
  float* grad_[3] = {};
  bool bound_ = false;
  saved_micro_batches<saved> saved_;
};

using entry = layer_entry<mtp_module>;

troupe_status create(const troupe_instance_config* config, troupe_instance** out,
                     troupe_error* error) {
  return guarded(error, [&] {
    model_shape model;
    TROUPE_TRY(cpu_model_shape(config, "mtp", model, error));
    *out = reinterpret_cast<troupe_instance*>(new mtp_module(model));
    return TROUPE_STATUS_OK;
  });
}

troupe_status infer_outputs(troupe_instance* instance, const DLTensor* inputs,
                            std::int32_t num_inputs, troupe_tensor_spec* outputs,
                            std::int32_t* num_outputs, troupe_error* error) {
  activation_shape shape;
  if (num_inputs != 2)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "mtp takes h_prev and embedded");
  troupe_exec_context where{};  // the input may be on any device the module computes on
  where.device = inputs[0].device;
  TROUPE_TRY(
      check_activation(inputs[0], entry::of(instance)->hidden(), "h_prev", shape, error, &where));
  if (*num_outputs < 1)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "room for one output needed");
  outputs[0] =
      troupe_tensor_spec{3, {shape.batch, shape.length, shape.width, 0}, {kDLFloat, 32, 1}};
  *num_outputs = 1;
  return TROUPE_STATUS_OK;
}

troupe_status forward(troupe_instance* instance, const troupe_exec_context* context,
                      std::int64_t micro_batch, const DLTensor* inputs, std::int32_t num_inputs,
                      DLTensor* outputs, std::int32_t num_outputs, troupe_error* error) {
  if (num_inputs != 2 || num_outputs != 1)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "mtp maps (h_prev, embedded) to h'");
  return guarded(error, [&] {
    return entry::of(instance)->forward(context, micro_batch, inputs[0], inputs[1], outputs[0],
                                        error);
  });
}

troupe_status backward(troupe_instance* instance, const troupe_exec_context* context,
                       std::int64_t micro_batch, troupe_backward_part part,
                       const DLTensor* output_grads, std::int32_t num_output_grads,
                       DLTensor* input_grads, std::int32_t num_input_grads, troupe_error* error) {
  const bool has = num_output_grads >= 1 && num_input_grads >= 2;
  return entry::of(instance)->backward(context, micro_batch, part, has ? &output_grads[0] : nullptr,
                                       has ? &input_grads[0] : nullptr,
                                       has ? &input_grads[1] : nullptr, error);
}

constexpr troupe_plugin table = entry::table(
    {TROUPE_PLUGIN_KIND_MTP, "mtp", "1.0.0",
     "DeepSeek-V3 multi-token prediction: each module's eh_proj([enorm(emb); hnorm(h)]) (CPU "
     "and CUDA)"},
    &create, &infer_outputs, &forward, &backward);

}  // namespace

extern "C" TROUPE_PLUGIN_EXPORT const troupe_plugin* troupe_plugin_entry(void) {
  return &table;
}
