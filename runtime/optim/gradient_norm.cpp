#include "runtime/optim/gradient_norm.hpp"

#include <cmath>

namespace troupe {

void add_gradients(const std::vector<parameter*>& parameters, const std::set<std::string>& skip,
                   gradient_summary& summary) {
  for (parameter* p : parameters) {
    if (!p->spec.trainable()) continue;
    const float* g = p->grad.data_as<const float>();
    double sum = 0.0;
    for (std::int64_t i = 0; i < p->grad.numel(); ++i)
      sum += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    if (!std::isfinite(sum) && summary.non_finite.empty()) summary.non_finite = p->name;
    if (!skip.count(p->name)) summary.norm_squared += sum;
  }
}

}  // namespace troupe
