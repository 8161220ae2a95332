#pragma once

// BF16 copies of parameters that layers keep (the routed experts' weights under bf16) and the
// optimizer writes in its own pass: a layer asks through its context (keep_bf16_copy, ABI 1.5),
// AdamW on a GPU finds the copy of each parameter it updates whole and writes the rounded new
// values there, and the layer asks bf16_copy_current before it would round them again. Any write
// of parameters other than the optimizer's (parameters_changed: a checkpoint load, a new
// allocation) makes every copy stale until the optimizer writes it again. Process-wide, like the
// parameter version.

#include <cstdint>
#include <vector>

namespace troupe::bf16_copies {

/// The context's keep_bf16_copy: records (or, `copy` null, forgets) the copy of the parameter
/// starting at `value`. Returns 1 when recorded (or forgotten), 0 for a bad request.
std::int32_t keep(const float* value, std::uint16_t* copy, std::int64_t count);

/// The context's bf16_copy_current.
std::int32_t current(const float* value);

/// The copy recorded for the parameter at `value` with `count` elements, or null (none, or one of
/// another size).
std::uint16_t* find(const float* value, std::int64_t count);

/// A number that moves whenever a copy is recorded or forgotten (the optimizer looks its copies
/// up again when it moved).
std::uint64_t changes();

/// The optimizer has enqueued the writes of these values' copies (after parameters_changed()):
/// they are current.
void written(const std::vector<const float*>& values);

/// Every copy is stale (parameters_changed calls it).
void invalidate_all();

/// The copies of these values are stale (an optimizer step about to write them, before it marks
/// those it writes with written()); the others stay as they are.
void invalidate(const std::vector<const float*>& values);

}  // namespace troupe::bf16_copies
