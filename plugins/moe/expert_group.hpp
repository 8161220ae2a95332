#pragma once

// The routed experts an expert shard owns of one MoE layer, as a plugin instance: it computes
// the token rows dispatched to it (grouped by expert, kernels/cpu/expert_combine.hpp) and returns
// their outputs for the combine on the stage that routed them.

#include <cstdint>
#include <string>
#include <vector>

#include "plugins/common/model_shape.hpp"
#include "plugins/common/plugin_support.hpp"
#include "plugins/moe/routed_experts.hpp"

namespace troupe::plugin {

class expert_group {
 public:
  /// `ids`: the global expert indices this group owns, ascending, each below n_routed_experts.
  expert_group(const model_shape& config, std::vector<std::int64_t> ids);

  const parameter_list& parameters() const { return parameters_; }
  troupe_status bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                     troupe_error* error);
  std::int64_t hidden() const { return hidden_; }
  std::int64_t count() const { return experts_.count(); }

  /// rows [1, R, H] f32 grouped by expert, row_counts [count()] i64 (rows per owned expert, in
  /// `ids` order) -> y_rows [1, R, H].
  troupe_status forward(const troupe_exec_context* context, std::int64_t micro_batch,
                        const DLTensor& rows, const DLTensor& row_counts, const DLTensor& y_rows,
                        troupe_error* error);
  /// dy_rows -> dx_rows (+=) and the experts' weight gradients.
  troupe_status backward(const troupe_exec_context* context, std::int64_t micro_batch,
                         troupe_backward_part part, const DLTensor* dy_rows,
                         const DLTensor* dx_rows, troupe_error* error);
  void forget(std::int64_t micro_batch) { experts_.forget(micro_batch); }
  const std::string& statistics();

 private:
  std::int64_t hidden_;
  parameter_list parameters_;
  routed_experts experts_;
  std::vector<float*> weight_, grad_;
  std::string statistics_;
};

}  // namespace troupe::plugin
