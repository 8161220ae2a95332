#include "runtime/schedule/timeline.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>

#include "runtime/core/error.hpp"

namespace troupe {

namespace {

using work_key = std::pair<std::int32_t, std::int64_t>;  // (stage, micro-batch)

work_key key_of(const stage_work& w) {
  return {w.stage, w.micro_batch};
}

double cost_of(const pipeline_op& op, const op_costs& costs) {
  switch (op.kind) {
    case op_kind::forward:
      return costs.forward;
    case op_kind::backward:
      return costs.backward;
    case op_kind::backward_input:
      return costs.backward - costs.weight;
    case op_kind::backward_weight:
      return costs.weight;
    case op_kind::forward_backward:
      return costs.forward_backward;
  }
  return 0.0;
}

}  // namespace

double timeline::max_bubble() const {
  double worst = 0.0;
  for (std::size_t r = 0; r < busy.size(); ++r) worst = std::max(worst, bubble(r));
  return worst;
}

timeline simulate(const schedule_plan& plan, const op_costs& costs) {
  const auto ranks = static_cast<std::size_t>(plan.ranks());
  const std::int32_t last = plan.stages() - 1;
  timeline out;
  out.costs = costs;
  out.ranks.resize(ranks);
  out.busy.assign(ranks, 0.0);
  std::vector<std::size_t> next(ranks, 0);
  std::vector<double> clock(ranks, 0.0);
  std::map<work_key, double> forward_done, backward_done;  // input gradients ready

  // When the inputs of a forward / backward are ready, or a negative value if not yet.
  auto forward_ready = [&](const stage_work& w) -> double {
    if (w.stage == 0) return 0.0;
    auto it = forward_done.find({w.stage - 1, w.micro_batch});
    return it == forward_done.end() ? -1.0 : it->second;
  };
  auto backward_ready = [&](const stage_work& w) -> double {
    auto own = forward_done.find(key_of(w));
    if (own == forward_done.end()) return -1.0;
    if (w.stage == last) return own->second;
    auto it = backward_done.find({w.stage + 1, w.micro_batch});
    return it == backward_done.end() ? -1.0 : std::max(it->second, own->second);
  };

  bool progress = true;
  while (progress) {
    progress = false;
    for (std::size_t r = 0; r < ranks; ++r) {
      const auto& ops = plan.ops(static_cast<std::int32_t>(r));
      while (next[r] < ops.size()) {
        const pipeline_op& op = ops[next[r]];
        double ready = clock[r];
        switch (op.kind) {
          case op_kind::forward:
            ready = forward_ready(op.work);
            break;
          case op_kind::backward:
          case op_kind::backward_input:
            ready = backward_ready(op.work);
            break;
          case op_kind::backward_weight:
            ready = 0.0;  // its input part ran earlier on this rank
            break;
          case op_kind::forward_backward: {
            const double f = forward_ready(op.work), b = backward_ready(op.backward_work);
            ready = f < 0.0 || b < 0.0 ? -1.0 : std::max(f, b);
            break;
          }
        }
        if (ready < 0.0) break;
        const double start = std::max(clock[r], ready), end = start + cost_of(op, costs);
        if (op.kind == op_kind::forward || op.kind == op_kind::forward_backward)
          forward_done[key_of(op.work)] = end;
        if (op.kind == op_kind::backward || op.kind == op_kind::backward_input)
          backward_done[key_of(op.work)] = end;
        if (op.kind == op_kind::forward_backward) backward_done[key_of(op.backward_work)] = end;
        out.ranks[r].push_back({op, start, end});
        out.busy[r] += end - start;
        clock[r] = end;
        ++next[r];
        progress = true;
      }
    }
  }
  std::string stuck;
  for (std::size_t r = 0; r < ranks; ++r)
    if (next[r] < plan.ops(static_cast<std::int32_t>(r)).size())
      stuck += fmt::format(" rank {} at {};", r,
                           describe(plan.ops(static_cast<std::int32_t>(r))[next[r]]));
  if (!stuck.empty()) fail("the {} plan deadlocks:{}", to_string(plan.kind()), stuck);
  out.makespan = *std::max_element(clock.begin(), clock.end());
  return out;
}

double predicted_bubble(const schedule_plan& plan, const op_costs& c) {
  const double pp = plan.stages(), n = static_cast<double>(plan.micro_batches());
  switch (plan.kind()) {
    case schedule_kind::sequential:
      return n * (pp - 1.0) * (c.forward + c.backward);
    case schedule_kind::one_f_one_b:
      return (pp - 1.0) * (c.forward + c.backward);
    case schedule_kind::dualpipe:
      return (pp / 2.0 - 1.0) * (c.forward_backward + c.backward - 3.0 * c.weight);
  }
  return 0.0;
}

std::string bubble_formula(schedule_kind kind) {
  switch (kind) {
    case schedule_kind::sequential:
      return "N(PP-1)(F+B)";
    case schedule_kind::one_f_one_b:
      return "(PP-1)(F+B)";
    case schedule_kind::dualpipe:
      return "(PP/2-1)(F&B+B-3W)";
  }
  return "?";
}

std::string render_timeline(const timeline& played) {
  // One cell per time unit; an op of cost c fills c cells with its label (F&B: F, then B).
  const auto units = static_cast<std::size_t>(std::ceil(played.makespan - 1e-9));
  const double forward_share =
      played.costs.forward / (played.costs.forward + played.costs.backward);
  std::vector<std::vector<std::string>> rows;
  std::size_t width = 1;
  for (const auto& rank : played.ranks) {
    std::vector<std::string> cells(units, std::string("."));
    for (const auto& t : rank) {
      const auto first = static_cast<std::size_t>(std::floor(t.start + 1e-9));
      const auto end = static_cast<std::size_t>(std::ceil(t.end - 1e-9));
      for (std::size_t u = first; u < end && u < units; ++u) {
        std::string& cell = cells[u];
        if (t.op.kind == op_kind::forward_backward) {
          const bool forward_half = static_cast<double>(u - first) + 0.5 <
                                    forward_share * static_cast<double>(end - first);
          cell = forward_half ? "F" + std::to_string(t.op.work.micro_batch)
                              : "B" + std::to_string(t.op.backward_work.micro_batch);
        } else {
          cell = describe(t.op);
        }
        width = std::max(width, cell.size());
      }
    }
    rows.push_back(std::move(cells));
  }
  std::string out;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    out += fmt::format("rank {:>2} |", r);
    for (const auto& cell : rows[r]) out += fmt::format(" {:<{}}", cell, width);
    out += fmt::format(" | busy {:g}, bubble {:g}\n", played.busy[r], played.bubble(r));
  }
  return out;
}

}  // namespace troupe
