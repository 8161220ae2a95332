#include "plugins/moe/routed_experts.hpp"

#include <algorithm>
#include <cstddef>

#include "kernels/cpu/linear.hpp"

namespace troupe::plugin {

using kernels::linear_backward;
using kernels::linear_forward;

routed_experts::routed_experts(const model_shape& c, std::vector<std::int64_t> ids,
                               parameter_list& parameters)
    : hidden_(c.hidden_size), inter_(c.moe_intermediate_size), ids_(std::move(ids)) {
  const float std_init = 0.02f;
  // NOTES: the first Wgrad after each zeroing writes the gradients whole (backward_weight), so the
  // runtime need not zero them (6.6 G floats a step on the medium config).
  const std::uint32_t flags = TROUPE_PARAM_TRAINABLE | TROUPE_PARAM_GRAD_OVERWRITTEN;
  for (const std::int64_t e : ids_) {
    const std::string prefix = fmt::format("mlp.experts.{}.", e);
    gate_.push_back(parameters.add(prefix + "gate_proj.weight", {inter_, hidden_},
                                   TROUPE_INIT_NORMAL, std_init, flags));
    up_.push_back(parameters.add(prefix + "up_proj.weight", {inter_, hidden_}, TROUPE_INIT_NORMAL,
                                 std_init, flags));
    down_.push_back(parameters.add(prefix + "down_proj.weight", {hidden_, inter_},
                                   TROUPE_INIT_NORMAL, std_init, flags));
  }
}

void routed_experts::bind(std::span<float* const> weights, std::span<float* const> grads) {
  weight_ = weights;
  grad_ = grads;
  for (auto* table : {&gate_weights_, &up_weights_, &down_weights_}) *table = {};
  for (auto* table : {&gate_grads_, &up_grads_, &down_grads_}) *table = {};
  copies_.reset();  // derived from the old bindings
  squares_reported_.withdraw();
}

const float* routed_experts::input_rows(const troupe_exec_context* context, const saved_rows& s,
                                        std::int64_t first, std::int64_t n, buffer& rows) const {
  if (s.order == nullptr) return s.x + first * hidden_;
  rows.allocate(context, static_cast<std::size_t>(n * hidden_));
  ops::gather_expert_rows(context, s.x, s.order + first, s.topk, hidden_, rows.data(), 0, n);
  return rows.data();
}

template <class F>
troupe_status routed_experts::for_each_expert(const troupe_exec_context* context,
                                              const saved_rows& s, F&& body, troupe_error* error) {
  const std::int64_t local = count();
  std::vector<troupe_status> statuses(static_cast<std::size_t>(local), TROUPE_STATUS_OK);
  std::vector<troupe_error> errors(static_cast<std::size_t>(local));
  const auto rows_of = [&](std::int64_t e) {
    return s.offsets[static_cast<std::size_t>(e + 1)] - s.offsets[static_cast<std::size_t>(e)];
  };
  auto expert = [&](const troupe_exec_context* on, std::int64_t e) {
    const auto i = static_cast<std::size_t>(e);
    statuses[i] =
        guarded(&errors[i], [&] { return body(on, i, s.offsets[i], rows_of(e), &errors[i]); });
  };
  std::vector<std::int64_t> order;
  for (std::int64_t e = 0; e < local; ++e)
    if (rows_of(e) > 0) order.push_back(e);
  if (on_gpu(context)) {
    for (const std::int64_t e : order) expert(context, e);  // one stream: ordered anyway
  } else {
    // NOTES: one expert's GEMMs run whole on one worker (each splitting again packed its operands
    // twice and woke the pool per call); the experts are taken largest first so the last ones
    // to finish are small.
    std::stable_sort(order.begin(), order.end(),
                     [&](std::int64_t a, std::int64_t b) { return rows_of(a) > rows_of(b); });
    parallel_tasks(context, order, expert);
  }
  for (std::size_t e = 0; e < statuses.size(); ++e)
    if (statuses[e] != TROUPE_STATUS_OK) {
      *error = errors[e];
      return statuses[e];
    }
  return TROUPE_STATUS_OK;
}

troupe_status routed_experts::forward(const troupe_exec_context* context, std::int64_t micro_batch,
                                      const float* x, const std::int64_t* order, std::int64_t topk,
                                      std::span<const std::int64_t> offsets,
                                      const std::int64_t* device_offsets, std::int64_t rows,
                                      float* y_rows, troupe_error* error, std::uint16_t* y_rows16) {
  const bool use_grouped = grouped(context) && device_offsets != nullptr;
  if (!use_grouped && static_cast<std::int64_t>(offsets.size()) != count() + 1)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "expected {} expert row offsets, got {}",
                count() + 1, offsets.size());
  saved_rows* s = saved_.start(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  s->x = x;
  s->order = order;
  s->topk = topk;
  s->grouped = use_grouped;
  s->device_offsets = device_offsets;
  if (y_rows16 != nullptr && !(use_grouped && bf16_activations(context))) {
    saved_.release(micro_batch);
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "experts: BF16 output rows need the grouped GEMMs' BF16 math");
  }
  if (use_grouped) {
    s->rows = rows;
    const troupe_status status =
        guarded(error, [&] { return grouped_forward(context, *s, y_rows, y_rows16); });
    if (status != TROUPE_STATUS_OK) saved_.release(micro_batch);
    return status;
  }
  s->offsets.assign(offsets.begin(), offsets.end());
  s->rows = s->offsets.back();
  troupe_status status = guarded(error, [&] {
    s->gate_up.allocate(context, static_cast<std::size_t>(rows * 2 * inter_));
    return TROUPE_STATUS_OK;
  });
  if (status == TROUPE_STATUS_OK)
    status = for_each_expert(
        context, *s,
        [&](const troupe_exec_context* on, std::size_t e, std::int64_t first, std::int64_t n,
            troupe_error* err) {
          buffer gathered, hidden_rows;
          hidden_rows.allocate(on, static_cast<std::size_t>(n * inter_));
          const float* in = input_rows(on, *s, first, n, gathered);
          float* gu = s->gate_up.data() + first * 2 * inter_;
          TROUPE_TRY(linear_forward(on, in, hidden_, weight_[gate_[e]], gu, 2 * inter_, n, hidden_,
                                    inter_, false, err));
          TROUPE_TRY(linear_forward(on, in, hidden_, weight_[up_[e]], gu + inter_, 2 * inter_, n,
                                    hidden_, inter_, false, err));
          ops::swiglu_forward_fused(on, gu, hidden_rows.data(), n, inter_);
          return linear_forward(on, hidden_rows.data(), inter_, weight_[down_[e]],
                                y_rows + first * hidden_, hidden_, n, inter_, hidden_, false, err);
        },
        error);
  if (status != TROUPE_STATUS_OK) saved_.release(micro_batch);
  return status;
}

troupe_status routed_experts::backward_input(const troupe_exec_context* context,
                                             std::int64_t micro_batch, const float* dy_rows,
                                             float* dx_rows, troupe_error* error,
                                             device_array<std::uint16_t>* dy_rows16,
                                             std::uint16_t* dx_rows16) {
  saved_rows* s = saved_.for_input(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  const std::int64_t rows = s->rows;
  if (dx_rows16 != nullptr && !s->bf16) {
    saved_.release(micro_batch);
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "experts: BF16 input gradient rows need the grouped GEMMs' BF16 math in forward");
  }
  const troupe_status copied = guarded(error, [&] {
    const auto count = [](std::int64_t r, std::int64_t width) {
      return static_cast<std::size_t>(r * width);
    };
    if (s->bf16) {  // written whole before they are read
      if (dy_rows16 != nullptr && dy_rows16->size() == count(rows, hidden_)) {
        s->d_out16 = std::move(*dy_rows16);  // rounded by their producer
      } else {
        if (dy_rows == nullptr)
          return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                      "experts: no output gradient (rounded rows of another size)");
        s->d_out16.allocate(context, count(rows, hidden_));
        ops::round_to_bf16(context, dy_rows, s->d_out16.data(), rows * hidden_);
      }
      s->d_gate_up16.allocate(context, count(rows, 2 * inter_));
      return TROUPE_STATUS_OK;
    }
    if (dy_rows == nullptr)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "experts: the output gradient in f32 is needed on this context");
    s->d_out.assign_copy(context, dy_rows, count(rows, hidden_));
    s->hidden.allocate(context, count(rows, inter_));
    s->d_gate_up.allocate(context, count(rows, 2 * inter_));  // written whole
    return TROUPE_STATUS_OK;
  });
  if (copied != TROUPE_STATUS_OK) {
    saved_.release(micro_batch);
    return copied;
  }
  if (s->grouped) {
    const troupe_status status = guarded(error, [&] {
      grouped_backward_input(context, *s, dx_rows, dx_rows16);
      return TROUPE_STATUS_OK;
    });
    if (status != TROUPE_STATUS_OK) {
      saved_.release(micro_batch);
      return status;
    }
    saved_.input_done(micro_batch);
    return TROUPE_STATUS_OK;
  }
  const troupe_status status = for_each_expert(
      context, *s,
      [&](const troupe_exec_context* on, std::size_t e, std::int64_t first, std::int64_t n,
          troupe_error* err) {
        const float* gu = s->gate_up.data() + first * 2 * inter_;
        ops::swiglu_forward_fused(on, gu, s->hidden.data() + first * inter_, n, inter_);
        buffer dh;
        dh.allocate(on, static_cast<std::size_t>(n * inter_));  // Dgrad overwrites it
        TROUPE_TRY(linear_backward(on, s->d_out.data() + first * hidden_, hidden_, nullptr, 0,
                                   weight_[down_[e]], dh.data(), inter_, nullptr, n, inter_,
                                   hidden_, err, false));
        float* dgu = s->d_gate_up.data() + first * 2 * inter_;
        ops::swiglu_backward_fused(on, dh.data(), gu, dgu, n, inter_, false);
        float* dx = dx_rows + first * hidden_;
        TROUPE_TRY(linear_backward(on, dgu, 2 * inter_, nullptr, 0, weight_[gate_[e]], dx, hidden_,
                                   nullptr, n, hidden_, inter_, err));
        return linear_backward(on, dgu + inter_, 2 * inter_, nullptr, 0, weight_[up_[e]], dx,
                               hidden_, nullptr, n, hidden_, inter_, err);
      },
      error);
  if (status != TROUPE_STATUS_OK) {
    saved_.release(micro_batch);
    return status;
  }
  saved_.input_done(micro_batch);
  return TROUPE_STATUS_OK;
}

troupe_status routed_experts::backward_weight(const troupe_exec_context* context,
                                              std::int64_t micro_batch, troupe_error* error) {
  saved_rows* s = saved_.for_weight(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  if (!s->grouped && held_gradients(context) == ops::gradients_hold::anything)
    for (std::size_t e = 0; e < ids_.size(); ++e)  // the GEMMs below add
      for (const std::size_t parameter : {gate_[e], up_[e], down_[e]})
        if (grad_[parameter] != nullptr)
          ops::zero_bytes(context, grad_[parameter],
                          static_cast<std::size_t>(hidden_ * inter_) * sizeof(float));
  if (s->grouped) {
    const troupe_status status = guarded(error, [&] {
      try {
        grouped_backward_weight(context, *s);
      } catch (...) {
        squares_reported_.withdraw();  // a GEMM may have written gradients the sums do not match
        throw;
      }
      return TROUPE_STATUS_OK;
    });
    saved_.release(micro_batch);
    return status;
  }
  squares_reported_.withdraw();  // the per-expert GEMMs below sum no squares
  const troupe_status status = for_each_expert(
      context, *s,
      [&](const troupe_exec_context* on, std::size_t e, std::int64_t first, std::int64_t n,
          troupe_error* err) {
        buffer gathered;
        const float* in = input_rows(on, *s, first, n, gathered);
        TROUPE_TRY(linear_backward(on, s->d_out.data() + first * hidden_, hidden_,
                                   s->hidden.data() + first * inter_, inter_, weight_[down_[e]],
                                   nullptr, 0, grad_[down_[e]], n, inter_, hidden_, err));
        const float* dgu = s->d_gate_up.data() + first * 2 * inter_;
        TROUPE_TRY(linear_backward(on, dgu, 2 * inter_, in, hidden_, weight_[gate_[e]], nullptr, 0,
                                   grad_[gate_[e]], n, hidden_, inter_, err));
        return linear_backward(on, dgu + inter_, 2 * inter_, in, hidden_, weight_[up_[e]], nullptr,
                               0, grad_[up_[e]], n, hidden_, inter_, err);
      },
      error);
  saved_.release(micro_batch);
  return status;
}

void routed_experts::ensure_pointer_tables(const troupe_exec_context* context) {
  if (!gate_weights_.empty()) return;
  std::vector<const float*> gate, up, down;
  std::vector<float*> d_gate, d_up, d_down;
  for (std::size_t e = 0; e < ids_.size(); ++e) {
    gate.push_back(weight_[gate_[e]]);
    up.push_back(weight_[up_[e]]);
    down.push_back(weight_[down_[e]]);
    d_gate.push_back(grad_[gate_[e]]);
    d_up.push_back(grad_[up_[e]]);
    d_down.push_back(grad_[down_[e]]);
  }
  const auto upload = [&](auto& table, const auto& host) {
    table.assign(context, host.size());
    ops::copy_from_host(context, table.data(), host.data(), host.size() * sizeof(host[0]));
  };
  upload(gate_weights_, gate);
  upload(up_weights_, up);
  upload(down_weights_, down);
  upload(gate_grads_, d_gate);
  upload(up_grads_, d_up);
  upload(down_grads_, d_down);
}

routed_experts::rounded_set routed_experts::rounded_weights(const troupe_exec_context* context) {
  const bool versioned = context->struct_size >= offsetof(troupe_exec_context, parameter_version) +
                                                     sizeof(context->parameter_version) &&
                         context->parameter_version != nullptr;
  if (!versioned || ops::context_math(context) != ops::gemm_math::bf16) return {};
  const std::int64_t experts = count();
  const auto elements = [](std::size_t bytes) { return (bytes + 1) / 2; };
  ensure_pointer_tables(context);
  if (copies_.unplaced()) {  // the first time, or bound anew
    rounded_gate_up_.allocate(
        context, elements(ops::rounded_expert_weights_bytes(experts, 2 * inter_, hidden_)));
    rounded_down_.allocate(context,
                           elements(ops::rounded_expert_weights_bytes(experts, hidden_, inter_)));
    copies_.keep(context, copy_pieces());
  }
  if (copies_.stale(context)) {
    const ops::expert_weights gate_up{gate_weights_.data(), up_weights_.data()};
    const ops::expert_weights down{down_weights_.data()};
    ops::round_expert_weights(context, gate_up, experts, 2 * inter_, hidden_,
                              rounded_gate_up_.data());
    ops::round_expert_weights(context, down, experts, hidden_, inter_, rounded_down_.data());
  }
  return {rounded_gate_up_.data(), rounded_down_.data()};
}

ops::grouped_rows routed_experts::grouping(const saved_rows& s, bool gathered) const {
  return {s.device_offsets, count(), s.rows, gathered ? s.order : nullptr,
          gathered && s.order != nullptr ? s.topk : 1};
}

troupe_status routed_experts::grouped_forward(const troupe_exec_context* context, saved_rows& s,
                                              float* y_rows, std::uint16_t* y_rows16) {
  // NOTES: the tokens are gathered by the GEMM itself (row r reads x[order[r] / topk]): no
  // dispatch copy. gate and up write the two halves of one [R, 2I] buffer, as on the host.
  ensure_pointer_tables(context);
  const rounded_set rounded = rounded_weights(context);
  const std::int64_t rows = s.rows;
  const ops::expert_weights gate_up{gate_weights_.data(), up_weights_.data(), rounded.gate_up};
  const ops::expert_weights down{down_weights_.data(), nullptr, rounded.down};
  s.bf16 = bf16_activations(context);
  if (s.bf16) {
    // NOTES: every activation between the GEMMs is BF16, as each producer rounds it: the
    // gathered input (once, for Fprop and Wgrad), gate|up (Fprop's own output), h (SwiGLU's),
    // and the output rows where the caller takes them so.
    s.input16.allocate(context, static_cast<std::size_t>(rows * hidden_));
    ops::gather_rows_bf16(context, grouping(s, true), s.x, hidden_, hidden_, s.input16.data());
    s.gate_up16.allocate(context, static_cast<std::size_t>(rows * 2 * inter_));
    ops::grouped_fprop(context, grouping(s, false), nullptr, hidden_, gate_up, 2 * inter_, hidden_,
                       nullptr, 2 * inter_, false, s.input16.data(), s.gate_up16.data());
    s.hidden16.allocate(context, static_cast<std::size_t>(rows * inter_));
    ops::swiglu_forward_fused_bf16(context, s.gate_up16.data(), s.hidden16.data(), rows, inter_);
    ops::grouped_fprop(context, grouping(s, false), nullptr, inter_, down, hidden_, inter_, y_rows,
                       hidden_, false, s.hidden16.data(), y_rows16);
    return TROUPE_STATUS_OK;
  }
  s.gate_up.allocate(context, static_cast<std::size_t>(rows * 2 * inter_));
  ops::grouped_fprop(context, grouping(s, true), s.x, hidden_, gate_up, 2 * inter_, hidden_,
                     s.gate_up.data(), 2 * inter_, false);
  buffer hidden_rows;
  hidden_rows.allocate(context, static_cast<std::size_t>(rows * inter_));
  ops::swiglu_forward_fused(context, s.gate_up.data(), hidden_rows.data(), rows, inter_);
  ops::grouped_fprop(context, grouping(s, false), hidden_rows.data(), inter_, down, hidden_, inter_,
                     y_rows, hidden_, false);
  return TROUPE_STATUS_OK;
}

bool routed_experts::bf16_activations(const troupe_exec_context* context) const {
  return ops::grouped_bf16_operands(context) && hidden_ % 8 == 0 && inter_ % 8 == 0;
}

void routed_experts::grouped_backward_input(const troupe_exec_context* context, saved_rows& s,
                                            float* dx_rows, std::uint16_t* dx_rows16) {
  const std::int64_t rows = s.rows;
  const rounded_set rounded = rounded_weights(context);
  const ops::expert_weights gate_up{gate_weights_.data(), up_weights_.data(), rounded.gate_up};
  const ops::expert_weights down{down_weights_.data(), nullptr, rounded.down};
  if (s.bf16) {  // the same passes over the BF16 activations (saved_rows says why)
    device_array<std::uint16_t> dh16;
    dh16.allocate(context, static_cast<std::size_t>(rows * inter_));  // Dgrad writes it whole
    ops::grouped_dgrad(context, grouping(s, false), nullptr, hidden_, down, hidden_, inter_,
                       nullptr, inter_, false, s.d_out16.data(), dh16.data());
    ops::swiglu_backward_fused_bf16(context, dh16.data(), s.gate_up16.data(), s.d_gate_up16.data(),
                                    rows, inter_);
    ops::grouped_dgrad(context, grouping(s, false), nullptr, 2 * inter_, gate_up, 2 * inter_,
                       hidden_, dx_rows, hidden_, false, s.d_gate_up16.data(), dx_rows16);
    return;
  }
  ops::swiglu_forward_fused(context, s.gate_up.data(), s.hidden.data(), rows, inter_);
  buffer dh;
  dh.allocate(context, static_cast<std::size_t>(rows * inter_));  // Dgrad overwrites it
  ops::grouped_dgrad(context, grouping(s, false), s.d_out.data(), hidden_, down, hidden_, inter_,
                     dh.data(), inter_, false);
  ops::swiglu_backward_fused(context, dh.data(), s.gate_up.data(), s.d_gate_up.data(), rows, inter_,
                             false);
  ops::grouped_dgrad(context, grouping(s, false), s.d_gate_up.data(), 2 * inter_, gate_up,
                     2 * inter_, hidden_, dx_rows, hidden_, false);
}

std::vector<bf16_weight_copies::piece> routed_experts::copy_pieces() {
  // NOTES: each expert's weights are one contiguous piece of the copies only when their rows need
  // no padding (rounded_expert_weights_bytes pads rows to 8 elements); otherwise the layer rounds.
  std::vector<bf16_weight_copies::piece> pieces;
  if (hidden_ % 8 != 0 || inter_ % 8 != 0) return pieces;
  const std::int64_t matrix = inter_ * hidden_;
  for (std::size_t e = 0; e < ids_.size(); ++e) {
    const auto at = static_cast<std::int64_t>(e);
    pieces.push_back({weight_[gate_[e]], rounded_gate_up_.data() + at * 2 * matrix, matrix});
    pieces.push_back({weight_[up_[e]], rounded_gate_up_.data() + (at * 2 + 1) * matrix, matrix});
    pieces.push_back({weight_[down_[e]], rounded_down_.data() + at * matrix, matrix});
  }
  return pieces;
}

void routed_experts::report_squares(const troupe_exec_context* context, bool gate_up, bool down) {
  const bool gate = grad_[gate_[0]] != nullptr, up = grad_[up_[0]] != nullptr;
  const bool has_down = grad_[down_[0]] != nullptr;
  if ((gate || up) && !gate_up) squares_reported_.withdraw();
  if (has_down && !down) squares_reported_.withdraw();
  const std::int64_t matrix = hidden_ * inter_, local = count();
  const double* sums = squares_.data();
  for (std::int64_t e = 0; e < local; ++e) {
    const auto i = static_cast<std::size_t>(e);
    if (gate_up && gate && up) {
      squares_reported_.report(context, grad_[gate_[i]], matrix, sums + 2 * e);
      squares_reported_.report(context, grad_[up_[i]], matrix, sums + 2 * e + 1);
    } else if (gate_up) {
      squares_reported_.report(context, grad_[gate ? gate_[i] : up_[i]], matrix, sums + e);
    }
    if (down) squares_reported_.report(context, grad_[down_[i]], matrix, sums + 2 * local + e);
  }
}

void routed_experts::grouped_backward_weight(const troupe_exec_context* context, saved_rows& s) {
  const ops::gradients_hold zeros = held_gradients(context);
  // NOTES: where the runtime takes them (ABI 1.6), Wgrad's epilogue sums the squares of the
  // gradients it stores, and the global norm reads those sums instead of the 6.6 G gradient
  // values (medium config) once more.
  const bool squares = gradient_square_reports::offered(context);
  if (squares && squares_.size() != static_cast<std::size_t>(3 * count()))
    squares_.allocate(context, static_cast<std::size_t>(3 * count()));
  double* gate_up_squares = squares ? squares_.data() : nullptr;
  double* down_squares = squares ? squares_.data() + 2 * count() : nullptr;
  bool gate_up_summed = false, down_summed = false;
  // The activations in f32, or (s.bf16) as their producers rounded them.
  const float* d_out = s.bf16 ? nullptr : s.d_out.data();
  const float* hidden = s.bf16 ? nullptr : s.hidden.data();
  const std::uint16_t* d_out16 = s.bf16 ? s.d_out16.data() : nullptr;
  const std::uint16_t* hidden16 = s.bf16 ? s.hidden16.data() : nullptr;
  if (grad_[down_[0]] != nullptr)
    down_summed = ops::grouped_wgrad(context, grouping(s, false), d_out, hidden_, hidden, inter_,
                                     {down_grads_.data()}, hidden_, inter_, zeros, d_out16,
                                     hidden16, down_squares);
  const bool gate = grad_[gate_[0]] != nullptr, up = grad_[up_[0]] != nullptr;
  // d_gate_up's columns from `first` on: the gate half (0) or the up half (inter_).
  const auto d_gate_up = [&](std::int64_t first) {
    return s.bf16 ? nullptr : s.d_gate_up.data() + first;
  };
  const auto d_gate_up16 = [&](std::int64_t first) {
    return s.bf16 ? s.d_gate_up16.data() + first : nullptr;
  };
  // The input rows: rounded once in forward where they were, else gathered from x by the pass.
  const bool rounded_input = !s.input16.empty();
  const ops::grouped_rows input_rows = grouping(s, !rounded_input);
  const float* x = rounded_input ? nullptr : s.x;
  const std::uint16_t* x16 = rounded_input ? s.input16.data() : nullptr;
  if (gate && up) {  // one GEMM for both: d_gate_up's halves into the two stacked tables
    gate_up_summed = ops::grouped_wgrad(context, input_rows, d_gate_up(0), 2 * inter_, x, hidden_,
                                        {gate_grads_.data(), up_grads_.data()}, 2 * inter_, hidden_,
                                        zeros, d_gate_up16(0), x16, gate_up_squares);
  } else if (gate || up) {
    const std::int64_t first = gate ? 0 : inter_;
    gate_up_summed =
        ops::grouped_wgrad(context, input_rows, d_gate_up(first), 2 * inter_, x, hidden_,
                           {gate ? gate_grads_.data() : up_grads_.data()}, inter_, hidden_, zeros,
                           d_gate_up16(first), x16, gate_up_squares);
  }
  if (squares) report_squares(context, gate_up_summed, down_summed);
}

std::size_t routed_experts::saved_bytes() const {
  std::size_t bytes = 0;
  saved_.for_each([&](std::int64_t, const saved_rows& s) {
    bytes += s.gate_up.bytes() + s.gate_up16.bytes() + s.hidden.bytes() + s.d_gate_up.bytes() +
             s.d_out.bytes() + s.hidden16.bytes() + s.d_gate_up16.bytes() + s.d_out16.bytes() +
             s.input16.bytes() + s.offsets.size() * sizeof(std::int64_t);
  });
  return bytes;
}

}  // namespace troupe::plugin
