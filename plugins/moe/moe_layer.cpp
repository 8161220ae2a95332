#include "plugins/moe/moe_layer.hpp"

#include <numeric>

namespace troupe::plugin {

namespace {

std::vector<std::int64_t> all_experts(const model_shape& c) {
  std::vector<std::int64_t> ids(static_cast<std::size_t>(c.n_routed_experts));
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

bool on(const DLTensor& t, DLDevice device) {
  return t.device.device_type == device.device_type && t.device.device_id == device.device_id;
}

troupe_status check_routing_tensor(const DLTensor& t, activation_shape shape, std::int64_t topk,
                                   std::uint8_t code, const char* what, troupe_error* error) {
  const bool ok = t.ndim == 3 && t.shape[0] == shape.batch && t.shape[1] == shape.length &&
                  t.shape[2] == topk && t.dtype.code == code && t.dtype.bits == 32 &&
                  t.device.device_type == kDLCPU;
  if (!ok)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "{} must be a CPU {}32 tensor [{}, {}, {}]",
                what, code == kDLInt ? "i" : "f", shape.batch, shape.length, topk);
  return TROUPE_STATUS_OK;
}

}  // namespace

// NOTES: the declaration order (router, routed experts, shared experts) is the parameter order
// the plugin reports, and the order of the checkpoint's tensors within a layer.
moe_layer::moe_layer(const model_shape& c, double balance_alpha, bool routing_only,
                     const node_limit& limit)
    : hidden_(c.hidden_size),
      router_(c, balance_alpha, limit, parameters_),
      routed_(routing_only ? std::nullopt
                           : std::make_optional<routed_experts>(c, all_experts(c), parameters_)),
      shared_(c, parameters_) {}

troupe_status moe_layer::bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                              troupe_error* error) {
  TROUPE_TRY(parameters_.bind(params, grads, count, weight_, grad_, error));
  router_.bind(weight_, grad_);
  if (routed_) routed_->bind(weight_, grad_);
  shared_.bind(weight_, grad_);
  return TROUPE_STATUS_OK;
}

troupe_status moe_layer::forward(const troupe_exec_context* context, std::int64_t micro_batch,
                                 const DLTensor& x, const DLTensor& y, const DLTensor& counts,
                                 const DLTensor& balance_loss, const DLTensor* selected,
                                 const DLTensor* gates, troupe_error* error) {
  if (weight_.empty()) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "forward before bind");
  activation_shape shape, out_shape;
  if (routing_only() && on_gpu(context))
    return fail(error, TROUPE_STATUS_UNSUPPORTED,
                "routing only (expert parallelism) runs on the CPU; on a GPU run whole layers");
  TROUPE_TRY(check_activation(x, hidden_, "the MoE input", shape, error, context));
  TROUPE_TRY(check_activation(y, hidden_, "the MoE output", out_shape, error, context));
  if (!on(counts, context->device) || !on(balance_loss, context->device))
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "counts and balance_loss must be on the device the call computes on ({})",
                device_name(context->device));
  const std::int64_t e_count = experts(), k = topk(), t = shape.tokens();
  if (counts.ndim != 1 || counts.shape[0] != e_count || counts.dtype.code != kDLInt ||
      counts.dtype.bits != 64)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "counts must be an i64 tensor [{}]",
                e_count);
  if (balance_loss.ndim != 1 || balance_loss.shape[0] != 1 || balance_loss.dtype.bits != 32)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "balance_loss must be an f32 tensor [1]");
  if (routing_only()) {
    if (selected == nullptr || gates == nullptr)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "routing only: selected and gates outputs are needed");
    TROUPE_TRY(check_routing_tensor(*selected, shape, k, kDLInt, "selected", error));
    TROUPE_TRY(check_routing_tensor(*gates, shape, k, kDLFloat, "gates", error));
  }
  saved_state* s = saved_.start(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  const troupe_status status = guarded(error, [&]() -> troupe_status {
    s->shape = shape;
    const float* in = data_of(x);
    std::int32_t* chosen = nullptr;
    float* gate_values = nullptr;
    if (routing_only()) {
      chosen = static_cast<std::int32_t*>(selected->data);
      gate_values = data_of(*gates);
    } else {
      s->selected.assign(context, static_cast<std::size_t>(t * k));
      s->gates.assign(context, static_cast<std::size_t>(t * k));
      chosen = s->selected.data();
      gate_values = s->gates.data();
    }
    TROUPE_TRY(router_.forward(context, micro_batch, in, shape, chosen, gate_values,
                               static_cast<std::int64_t*>(counts.data), data_of(balance_loss),
                               error));
    float* out = data_of(y);
    TROUPE_TRY(shared_.forward(context, micro_batch, in, t, out, error));
    if (routing_only()) return TROUPE_STATUS_OK;
    s->order.assign(context, static_cast<std::size_t>(t * k));
    s->position.assign(context, static_cast<std::size_t>(t * k));
    s->offsets.assign(context, static_cast<std::size_t>(e_count + 1));
    ops::group_by_expert(context, chosen, t, k, e_count, s->order.data(), s->position.data(),
                         s->offsets.data());
    if (!routed_->grouped(context)) {  // one GEMM per expert: their shapes on the host
      s->host_offsets.resize(static_cast<std::size_t>(e_count + 1));
      ops::copy_to_host(context, s->host_offsets.data(), s->offsets.data(), s->offsets.bytes());
    }
    // The grouped GEMMs write every row when this layer holds every expert (in BF16 where their
    // math is BF16: the combine reads them so); otherwise the rows of the experts it does not
    // hold stay zeros.
    const std::size_t rows = static_cast<std::size_t>(t * k * hidden_);
    const bool whole = routed_->grouped(context) && routed_->count() == e_count;
    if (whole && routed_->bf16_rows(context)) {
      s->expert_out16.allocate(context, rows);
      TROUPE_TRY(routed_->forward(context, micro_batch, in, s->order.data(), k, s->host_offsets,
                                  s->offsets.data(), t * k, nullptr, error,
                                  s->expert_out16.data()));
      ops::combine_forward(context, s->expert_out16.data(), gate_values, s->position.data(), k,
                           hidden_, out, t);
      return TROUPE_STATUS_OK;
    }
    if (whole)
      s->expert_out.allocate(context, rows);
    else
      s->expert_out.assign(context, rows);
    TROUPE_TRY(routed_->forward(context, micro_batch, in, s->order.data(), k, s->host_offsets,
                                s->offsets.data(), t * k, s->expert_out.data(), error));
    ops::combine_forward(context, s->expert_out.data(), gate_values, s->position.data(), k, hidden_,
                         out, t);
    return TROUPE_STATUS_OK;
  });
  if (status != TROUPE_STATUS_OK) forget(micro_batch);
  return status;
}

troupe_status moe_layer::backward_input(const troupe_exec_context* context,
                                        std::int64_t micro_batch, saved_state& s, const float* dy,
                                        float d_balance, const float* d_gates_in, float* dx,
                                        troupe_error* error) {
  const std::int64_t t = s.shape.tokens(), k = topk(), h = hidden_;
  buffer d_gates;
  if (!routing_only()) {
    // Routed experts first: combine backward, the experts, then each token's rows in slot order.
    const std::int64_t pairs = t * k;
    d_gates.allocate(context, static_cast<std::size_t>(pairs));  // combine_backward writes all
    const auto rows = static_cast<std::size_t>(pairs * h);
    buffer d_out, d_rows;
    // The experts' BF16 math reads their output gradient rounded: the combine writes it so.
    device_array<std::uint16_t> d_out16, d_rows16;
    if (routed_->bf16_rows(context))
      d_out16.allocate(context, rows);
    else
      d_out.allocate(context, rows);
    if (!s.expert_out16.empty())  // BF16 rows both ways, as forward chose
      ops::combine_backward(context, dy, s.expert_out16.data(), s.gates.data(), s.order.data(), k,
                            h, d_gates.data(), d_out.data(), pairs, d_out16.data(),
                            s.position.data());
    else
      ops::combine_backward(context, dy, s.expert_out.data(), s.gates.data(), s.order.data(), k, h,
                            d_gates.data(), d_out.data(), pairs, d_out16.data());
    if (!s.expert_out16.empty())
      d_rows16.allocate(context, rows);
    else if (routed_->grouped(context) && routed_->count() == experts())  // as expert_out
      d_rows.allocate(context, rows);
    else
      d_rows.assign(context, rows);
    TROUPE_TRY(routed_->backward_input(context, micro_batch, d_out.data(), d_rows.data(), error,
                                       d_out16.empty() ? nullptr : &d_out16,
                                       d_rows16.empty() ? nullptr : d_rows16.data()));
    if (!d_rows16.empty())
      ops::scatter_add_rows(context, d_rows16.data(), s.position.data(), k, h, dx, t);
    else
      ops::scatter_add_rows(context, d_rows.data(), s.position.data(), k, h, dx, t);
    d_gates_in = d_gates.data();
  }
  TROUPE_TRY(router_.backward_input(context, micro_batch, d_gates_in, d_balance, dx, error));
  TROUPE_TRY(shared_.backward_input(context, micro_batch, dy, dx, error));
  return TROUPE_STATUS_OK;
}

troupe_status moe_layer::backward_weight(const troupe_exec_context* context,
                                         std::int64_t micro_batch, troupe_error* error) {
  if (routed_) TROUPE_TRY(routed_->backward_weight(context, micro_batch, error));
  TROUPE_TRY(router_.backward_weight(context, micro_batch, error));
  return shared_.backward_weight(context, micro_batch, error);
}

troupe_status moe_layer::backward(const troupe_exec_context* context, std::int64_t micro_batch,
                                  troupe_backward_part part, const DLTensor* dy,
                                  float d_balance_loss, const DLTensor* d_gates, const DLTensor* dx,
                                  troupe_error* error) {
  const troupe_status status = saved_.backward(
      micro_batch, part, error,
      [&](saved_state& s) -> troupe_status {
        if (dy == nullptr || dx == nullptr)
          return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "backward needs dy and dx");
        activation_shape shape;
        TROUPE_TRY(check_activation(*dy, hidden_, "dy", shape, error, context));
        TROUPE_TRY(check_activation(*dx, hidden_, "dx", shape, error, context));
        const float* gate_grads = nullptr;
        if (routing_only()) {
          if (d_gates == nullptr)
            return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                        "routing only: backward needs d_gates (the combine's gate gradients)");
          TROUPE_TRY(check_routing_tensor(*d_gates, s.shape, topk(), kDLFloat, "d_gates", error));
          gate_grads = data_of(*d_gates);
        }
        return guarded(error, [&] {
          return backward_input(context, micro_batch, s, data_of(*dy), d_balance_loss, gate_grads,
                                data_of(*dx), error);
        });
      },
      [&](saved_state&) { return backward_weight(context, micro_batch, error); });
  // The router's and the experts' saved state goes with the layer's.
  if (status != TROUPE_STATUS_OK) forget(micro_batch);
  return status;
}

void moe_layer::forget(std::int64_t micro_batch) {
  router_.forget(micro_batch);
  if (routed_) routed_->forget(micro_batch);
  shared_.forget(micro_batch);
  saved_.release(micro_batch);
}

const std::string& moe_layer::statistics() {
  std::size_t bytes =
      router_.saved_bytes() + shared_.saved_bytes() + (routed_ ? routed_->saved_bytes() : 0);
  saved_.for_each([&](std::int64_t, const saved_state& s) {
    bytes += s.gates.bytes() + s.expert_out.bytes() + s.expert_out16.bytes() + s.selected.bytes() +
             s.order.bytes() + s.position.bytes() + s.offsets.bytes();
  });
  statistics_ =
      fmt::format(R"({{"micro_batches": {}, "saved_activation_bytes": {}}})", saved_.size(), bytes);
  return statistics_;
}

}  // namespace troupe::plugin
