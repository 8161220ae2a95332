#include "runtime/metrics/gpu_memory.hpp"

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <fmt/format.h>

#include "runtime/device/memory_pool.hpp"

namespace troupe {

namespace {

class gpu_memory_collector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    struct series {
      const char* name;
      const char* help;
      std::uint64_t cuda::pool_statistics::*field;
    };
    static constexpr series all[] = {
        {"troupe_gpu_memory_reserved_bytes", "Device memory troupe's pool has taken from the GPU",
         &cuda::pool_statistics::reserved},
        {"troupe_gpu_memory_in_use_bytes", "Device memory handed out to tensors and not freed",
         &cuda::pool_statistics::in_use},
        {"troupe_gpu_memory_peak_reserved_bytes", "Highest reserved memory so far",
         &cuda::pool_statistics::peak_reserved},
        {"troupe_gpu_memory_peak_in_use_bytes", "Highest memory in use so far",
         &cuda::pool_statistics::peak_in_use},
    };
    std::vector<prometheus::MetricFamily> families;
    const auto pools = cuda::memory_pool::created();
    if (pools.empty()) return families;
    std::vector<std::pair<int, cuda::pool_statistics>> stats;
    for (const cuda::memory_pool* pool : pools)
      stats.emplace_back(pool->device(), pool->statistics());
    for (const auto& s : all) {
      prometheus::MetricFamily family;
      family.name = s.name;
      family.help = s.help;
      family.type = prometheus::MetricType::Gauge;
      for (const auto& [device, values] : stats) {
        prometheus::ClientMetric metric;
        metric.label.push_back({"device", fmt::format("cuda:{}", device)});
        metric.gauge.value = static_cast<double>(values.*(s.field));
        family.metric.push_back(std::move(metric));
      }
      families.push_back(std::move(family));
    }
    return families;
  }
};

}  // namespace

std::shared_ptr<prometheus::Collectable> gpu_memory_collectable() {
  static const auto collector = std::make_shared<gpu_memory_collector>();
  return collector;
}

}  // namespace troupe
