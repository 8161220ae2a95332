#pragma once

// The pipeline schedules troupe runs (schedule_plan.hpp describes each).

#include <string_view>

namespace troupe {

enum class schedule_kind { sequential, one_f_one_b, dualpipe };

/// "sequential", "1f1b" or "dualpipe": the topology's spelling.
std::string_view to_string(schedule_kind kind);
/// The inverse of to_string; throws troupe::error for any other name.
schedule_kind parse_schedule_kind(std::string_view name);

}  // namespace troupe
