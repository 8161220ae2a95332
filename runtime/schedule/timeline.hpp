#pragma once

// A schedule plan played out with fixed op costs: when each op starts and ends on its rank,
// given that an op waits for the activations (forward) or gradients (backward) it needs and
// communication takes no time. This is how a plan's pipeline bubble is counted and drawn.

#include <string>
#include <vector>

#include "runtime/schedule/schedule_plan.hpp"

namespace troupe {

/// Execution times of one chunk (one stage, one micro-batch), as DualPipe's table names them.
struct op_costs {
  double forward = 1.0;           ///< F
  double backward = 2.0;          ///< B: a full backward (input and weight gradients)
  double weight = 1.0;            ///< W: the weight part alone (the input part costs B - W)
  double forward_backward = 3.0;  ///< F&B: an overlapped forward and backward pair
};

struct timed_op {
  pipeline_op op;
  double start = 0.0, end = 0.0;
};

struct timeline {
  op_costs costs;
  std::vector<std::vector<timed_op>> ranks;
  std::vector<double> busy;  ///< per rank, the sum of its op costs
  double makespan = 0.0;

  double bubble(std::size_t rank) const { return makespan - busy[rank]; }
  /// The largest bubble over the ranks: the pipeline's bubble.
  double max_bubble() const;
};

/// Plays the plan out; throws troupe::error naming the waiting ops if it deadlocks.
timeline simulate(const schedule_plan& plan, const op_costs& costs);

/// The bubble the schedule's analysis predicts: sequential N(PP-1)(F+B), 1f1b (PP-1)(F+B),
/// dualpipe (PP/2-1)(F&B+B-3W).
double predicted_bubble(const schedule_plan& plan, const op_costs& costs);
/// The formula behind predicted_bubble, as text.
std::string bubble_formula(schedule_kind kind);

/// A per-rank text timeline, one column per time unit of `costs` (integer costs draw best):
///   rank 0 | F0 F1 F2 F3 B0 B0 ...
std::string render_timeline(const timeline& played);

}  // namespace troupe
