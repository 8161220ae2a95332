#include "plugins/moe/expert_group.hpp"

namespace troupe::plugin {

expert_group::expert_group(const model_shape& c, std::vector<std::int64_t> ids)
    : hidden_(c.hidden_size), experts_(c, std::move(ids), parameters_) {}

troupe_status expert_group::bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                                 troupe_error* error) {
  TROUPE_TRY(parameters_.bind(params, grads, count, weight_, grad_, error));
  experts_.bind(weight_, grad_);
  return TROUPE_STATUS_OK;
}

troupe_status expert_group::forward(const troupe_exec_context* context, std::int64_t micro_batch,
                                    const DLTensor& rows, const DLTensor& row_counts,
                                    const DLTensor& y_rows, troupe_error* error) {
  if (weight_.empty()) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "forward before bind");
  activation_shape shape, out_shape;
  TROUPE_TRY(check_activation(rows, hidden_, "the expert rows", shape, error));
  TROUPE_TRY(check_activation(y_rows, hidden_, "the expert output rows", out_shape, error));
  if (row_counts.ndim != 1 || row_counts.shape[0] != count() || row_counts.dtype.code != kDLInt ||
      row_counts.dtype.bits != 64)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "row_counts must be an i64 tensor [{}]",
                count());
  if (out_shape.tokens() != shape.tokens())
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "{} input rows but {} output rows",
                shape.tokens(), out_shape.tokens());
  const auto* counts = static_cast<const std::int64_t*>(row_counts.data);
  std::vector<std::int64_t> offsets(static_cast<std::size_t>(count() + 1), 0);
  for (std::int64_t e = 0; e < count(); ++e) {
    if (counts[e] < 0)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "row_counts[{}] = {} is negative", e,
                  counts[e]);
    offsets[static_cast<std::size_t>(e + 1)] = offsets[static_cast<std::size_t>(e)] + counts[e];
  }
  if (offsets.back() != shape.tokens())
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "row_counts add up to {} rows, the input has {}", offsets.back(), shape.tokens());
  return guarded(error, [&] {
    return experts_.forward(context, micro_batch, data_of(rows), nullptr, 1, offsets, nullptr,
                            offsets.back(), data_of(y_rows), error);
  });
}

troupe_status expert_group::backward(const troupe_exec_context* context, std::int64_t micro_batch,
                                     troupe_backward_part part, const DLTensor* dy_rows,
                                     const DLTensor* dx_rows, troupe_error* error) {
  if (!experts_.in_flight(micro_batch))
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "no forward saved for micro-batch {}",
                micro_batch);
  return guarded(error, [&]() -> troupe_status {
    if (part != TROUPE_BACKWARD_WEIGHT) {
      if (dy_rows == nullptr || dx_rows == nullptr)
        return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "backward needs dy_rows and dx_rows");
      activation_shape shape;
      TROUPE_TRY(check_activation(*dy_rows, hidden_, "dy_rows", shape, error));
      TROUPE_TRY(check_activation(*dx_rows, hidden_, "dx_rows", shape, error));
      TROUPE_TRY(experts_.backward_input(context, micro_batch, data_of(*dy_rows), data_of(*dx_rows),
                                         error));
    }
    if (part != TROUPE_BACKWARD_INPUT)
      TROUPE_TRY(experts_.backward_weight(context, micro_batch, error));
    return TROUPE_STATUS_OK;
  });
}

const std::string& expert_group::statistics() {
  statistics_ = fmt::format(R"({{"experts": {}, "saved_activation_bytes": {}}})", count(),
                            experts_.saved_bytes());
  return statistics_;
}

}  // namespace troupe::plugin
