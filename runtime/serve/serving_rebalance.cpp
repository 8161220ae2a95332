#include "runtime/serve/serving_rebalance.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/core/error.hpp"
#include "runtime/experts/replicated_experts.hpp"
#include "runtime/serve/step_hold.hpp"

namespace troupe {

serving_rebalance::serving_rebalance(request_engine& engine,
                                     std::vector<controlled_instance> instances)
    : engine_(engine) {
  for (controlled_instance& i : instances)
    if (i.experts != nullptr) instances_.push_back(std::move(i));
}

bool serving_rebalance::has_shards() const {
  return !instances_.empty();
}

std::vector<std::int64_t> serving_rebalance::layers() const {
  std::vector<std::int64_t> out;
  if (instances_.empty()) return out;
  for (const auto& [layer, lists] : instances_.front().experts->placement().layers)
    out.push_back(layer);
  return out;
}

rebalance_outcome serving_rebalance::run(const layer_expert_load* load) {
  rebalance_outcome out;
  std::vector<std::string> done;
  try {
    out.pause_seconds = engine_.hold_steps([&] {
      for (const controlled_instance& i : instances_) {
        const replacement_report report =
            load != nullptr ? i.experts->rebalance(*load) : i.experts->rebalance_observed();
        out.moved += report.copied;
        out.bytes += report.bytes;
        nlohmann::json shards = nlohmann::json::object();
        for (const auto& [layer, lists] : i.experts->placement().layers)
          shards[std::to_string(layer)] = lists;
        out.instances[i.engine] = {{"outcome", report.changed ? "moved" : "unchanged"},
                                   {"moved", report.copied},
                                   {"bytes", report.bytes},
                                   {"seconds", report.seconds},
                                   {"shards", shards}};
        done.push_back(i.engine);
      }
    });
  } catch (const engine_stopping&) {
    throw;
  } catch (const std::exception& e) {
    // Each instance re-places on its own: those before the failure keep their new placement.
    if (done.empty()) throw;
    fail("{} (re-placed before the failure: {})", e.what(), fmt::join(done, ", "));
  }
  return out;
}

}  // namespace troupe
