#pragma once

// Internal to kernels/dispatch: the refusal of a GPU context by a build without CUDA.

namespace troupe::kernels::detail {

/// Throws std::runtime_error unless this build has CUDA (a GPU context reached code built
/// without it).
void require_cuda();

}  // namespace troupe::kernels::detail
