#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/swiglu.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;

// NOTES: expf, not __expf: the fast intrinsic's error (2 ulp + range reduction) shows in the FP32
// parity tests against the CPU, and these kernels are bound by memory, not by the exponential.
__device__ inline float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

/// h = silu(g) * u, and the gradients of both inputs for dh = d.
__device__ inline float silu_times(float g, float u) {
  return g * sigmoid(g) * u;
}
__device__ inline float4 silu_times(float4 g, float4 u) {
  return make_float4(silu_times(g.x, u.x), silu_times(g.y, u.y), silu_times(g.z, u.z),
                     silu_times(g.w, u.w));
}
__device__ inline void swiglu_gradients(float d, float g, float u, float& d_gate, float& d_up) {
  const float s = sigmoid(g);
  d_gate = d * u * s * (1.0f + g * (1.0f - s));
  d_up = d * g * s;
}

__device__ inline void swiglu_gradients(float4 d, float4 g, float4 u, float4& d_gate,
                                        float4& d_up) {
  swiglu_gradients(d.x, g.x, u.x, d_gate.x, d_up.x);
  swiglu_gradients(d.y, g.y, u.y, d_gate.y, d_up.y);
  swiglu_gradients(d.z, g.z, u.z, d_gate.z, d_up.z);
  swiglu_gradients(d.w, g.w, u.w, d_gate.w, d_up.w);
}

// NOTES: row r, column c of a [rows, width] SwiGLU reads gate[r * ld + c] and up[r * ld + c]
// (ld = width for separate buffers, 2 * width for a fused gate|up one, up = gate + width) and
// writes h[r * width + c]. Columns by the grid's x, rows by its y: a flat index split into
// (row, column) with a 64-bit division per element made these passes bound by instructions.
__global__ void swiglu_forward_kernel(const float* gate, const float* up, float* h,
                                      std::int64_t rows, std::int64_t width, std::int64_t ld) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= width) return;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const std::int64_t at = r * ld + c;
    h[r * width + c] = silu_times(gate[at], up[at]);
  }
}

__global__ void swiglu_backward_kernel(const float* dh, const float* gate, const float* up,
                                       float* dgate, float* dup, std::int64_t rows,
                                       std::int64_t width, std::int64_t ld, bool accumulate) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= width) return;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const std::int64_t at = r * ld + c;
    float d_gate, d_up;
    swiglu_gradients(dh[r * width + c], gate[at], up[at], d_gate, d_up);
    dgate[at] = accumulate ? dgate[at] + d_gate : d_gate;
    dup[at] = accumulate ? dup[at] + d_up : d_up;
  }
}

// NOTES: the fused [rows, 2 * width] passes of the routed experts (24,576 rows of 1,408 on the
// medium config) ran at a quarter of the memory's bandwidth one float per thread and one row per
// block; where width is a multiple of 4 and the buffers 16-byte aligned, a thread moves float4s
// and the grid strides over the flat (row, quad) index, split with 32-bit arithmetic where it
// fits.
/// Four results stored as f32 (a float4) or rounded to BF16 (one 8-byte word, as the grouped
/// GEMMs' staging rounds: to nearest even).
__device__ inline void put(float4* to, float4 v) {
  *to = v;
}
__device__ inline void put(uint2* to, float4 v) {
  *to = make_uint2(mma::pack(v.x, v.y), mma::pack(v.z, v.w));
}

/// Four inputs from f32 (a float4) or from BF16 (one 8-byte word of four BF16s).
__device__ inline float4 get(const float4* from) {
  return *from;
}
__device__ inline float4 get(const uint2* from) {
  const uint2 w = *from;
  return make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u),
                     __uint_as_float(w.y << 16), __uint_as_float(w.y & 0xffff0000u));
}

/// `In` float4 (f32 gate|up) or uint2 (BF16 ones, as the grouped GEMMs write them).
template <class Index, class In, class Out>
__global__ void swiglu_forward_quads(const In* gate, const In* up, Out* h, Index rows, Index quads,
                                     Index ld) {
  const Index total = rows * quads, stride = gridDim.x * blockDim.x;
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const Index r = i / quads, c = i - r * quads, at = r * ld + c;
    put(h + i, silu_times(get(gate + at), get(up + at)));
  }
}

/// The gradients of both halves rounded to BF16 into [rows, 2 * quads] words (no accumulation),
/// from f32 (float4) or BF16 (uint2) inputs.
template <class Index, class In>
__global__ void swiglu_backward_quads_bf16(const In* dh, const In* gate, const In* up, uint2* dgate,
                                           uint2* dup, Index rows, Index quads, Index ld) {
  const Index total = rows * quads, stride = gridDim.x * blockDim.x;
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const Index r = i / quads, c = i - r * quads, at = r * ld + c;
    float4 a, b;
    swiglu_gradients(get(dh + i), get(gate + at), get(up + at), a, b);
    put(dgate + at, a);
    put(dup + at, b);
  }
}

template <class Index>
__global__ void swiglu_backward_quads(const float4* dh, const float4* gate, const float4* up,
                                      float4* dgate, float4* dup, Index rows, Index quads, Index ld,
                                      bool accumulate) {
  const Index total = rows * quads, stride = gridDim.x * blockDim.x;
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const Index r = i / quads, c = i - r * quads, at = r * ld + c;
    float4 a, b;
    swiglu_gradients(dh[i], gate[at], up[at], a, b);
    if (accumulate) {
      const float4 p = dgate[at], q = dup[at];
      a = make_float4(p.x + a.x, p.y + a.y, p.z + a.z, p.w + a.w);
      b = make_float4(q.x + b.x, q.y + b.y, q.z + b.z, q.w + b.w);
    }
    dgate[at] = a;
    dup[at] = b;
  }
}

/// Whether the fused passes over [rows, width] can move float4s through these pointers.
bool quads_fit(std::int64_t width, std::initializer_list<const void*> pointers) {
  if (width % 4 != 0) return false;
  for (const void* p : pointers)
    if (!aligned(p, 16)) return false;
  return true;
}

/// launch(Index{}) with 32-bit indices where indices up to `count`, and a grid's stride past
/// them, fit; else 64-bit ones.
template <class Launch>
void with_index_for(std::int64_t count, Launch&& launch) {
  if (count + (std::int64_t{1} << 20) < (std::int64_t{1} << 32))
    launch(std::uint32_t{});
  else
    launch(std::uint64_t{});
}

/// A grid-stride launch over `total` elements: at most 2,112 blocks (16 on each of an H200's 132
/// multiprocessors; elsewhere the rest queue).
unsigned quad_blocks(std::int64_t total) {
  return static_cast<unsigned>(std::min<std::int64_t>(blocks_for(total, threads), 132 * 16));
}

/// Columns by x, rows by y (at most 65535 blocks; each walks rows with the grid's stride).
dim3 grid_of(std::int64_t rows, std::int64_t width) {
  return dim3(blocks_for(width, threads),
              static_cast<unsigned>(std::min<std::int64_t>(rows, 65535)));
}

}  // namespace

void swiglu_forward(const float* gate, const float* up, float* h, std::int64_t count,
                    void* stream) {
  if (count == 0) return;
  swiglu_forward_kernel<<<grid_of(1, count), threads, 0, as_stream(stream)>>>(gate, up, h, 1, count,
                                                                              count);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_backward(const float* dh, const float* gate, const float* up, float* dgate, float* dup,
                     std::int64_t count, void* stream) {
  if (count == 0) return;
  swiglu_backward_kernel<<<grid_of(1, count), threads, 0, as_stream(stream)>>>(
      dh, gate, up, dgate, dup, 1, count, count, true);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_forward_fused(const float* gate_up, float* h, std::int64_t rows, std::int64_t width,
                          void* stream) {
  if (rows * width == 0) return;
  if (quads_fit(width, {gate_up, h})) {
    const std::int64_t quads = width / 4, total = rows * quads;
    const auto* gate = reinterpret_cast<const float4*>(gate_up);
    const auto* up = gate + quads;
    auto* out = reinterpret_cast<float4*>(h);
    with_index_for(rows * 2 * quads, [&](auto zero) {
      using Index = decltype(zero);
      swiglu_forward_quads<Index, float4, float4>
          <<<quad_blocks(total), threads, 0, as_stream(stream)>>>(
              gate, up, out, static_cast<Index>(rows), static_cast<Index>(quads),
              static_cast<Index>(2 * quads));
    });
    TROUPE_CUDA_LAUNCHED();
    return;
  }
  swiglu_forward_kernel<<<grid_of(rows, width), threads, 0, as_stream(stream)>>>(
      gate_up, gate_up + width, h, rows, width, 2 * width);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_backward_fused(const float* dh, const float* gate_up, float* dgate_up,
                           std::int64_t rows, std::int64_t width, void* stream, bool accumulate) {
  if (rows * width == 0) return;
  if (quads_fit(width, {dh, gate_up, dgate_up})) {
    const std::int64_t quads = width / 4, total = rows * quads;
    const auto* d = reinterpret_cast<const float4*>(dh);
    const auto* gate = reinterpret_cast<const float4*>(gate_up);
    auto* dgate = reinterpret_cast<float4*>(dgate_up);
    with_index_for(rows * 2 * quads, [&](auto zero) {
      using Index = decltype(zero);
      swiglu_backward_quads<Index><<<quad_blocks(total), threads, 0, as_stream(stream)>>>(
          d, gate, gate + quads, dgate, dgate + quads, static_cast<Index>(rows),
          static_cast<Index>(quads), static_cast<Index>(2 * quads), accumulate);
    });
    TROUPE_CUDA_LAUNCHED();
    return;
  }
  swiglu_backward_kernel<<<grid_of(rows, width), threads, 0, as_stream(stream)>>>(
      dh, gate_up, gate_up + width, dgate_up, dgate_up + width, rows, width, 2 * width, accumulate);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_forward_fused_bf16(const float* gate_up, std::uint16_t* h, std::int64_t rows,
                               std::int64_t width, void* stream) {
  require(quads_fit(width, {gate_up}) && aligned(h, 8), "swiglu_forward_fused_bf16",
          "the width must be a multiple of 4 and the buffers aligned");
  if (rows * width == 0) return;
  const std::int64_t quads = width / 4, total = rows * quads;
  const auto* gate = reinterpret_cast<const float4*>(gate_up);
  with_index_for(rows * 2 * quads, [&](auto zero) {
    using Index = decltype(zero);
    swiglu_forward_quads<Index, float4, uint2>
        <<<quad_blocks(total), threads, 0, as_stream(stream)>>>(
            gate, gate + quads, reinterpret_cast<uint2*>(h), static_cast<Index>(rows),
            static_cast<Index>(quads), static_cast<Index>(2 * quads));
  });
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_backward_fused_bf16(const float* dh, const float* gate_up, std::uint16_t* dgate_up,
                                std::int64_t rows, std::int64_t width, void* stream) {
  require(quads_fit(width, {dh, gate_up}) && aligned(dgate_up, 8), "swiglu_backward_fused_bf16",
          "the width must be a multiple of 4 and the buffers aligned");
  if (rows * width == 0) return;
  const std::int64_t quads = width / 4, total = rows * quads;
  const auto* gate = reinterpret_cast<const float4*>(gate_up);
  auto* out = reinterpret_cast<uint2*>(dgate_up);
  with_index_for(rows * 2 * quads, [&](auto zero) {
    using Index = decltype(zero);
    swiglu_backward_quads_bf16<Index, float4>
        <<<quad_blocks(total), threads, 0, as_stream(stream)>>>(
            reinterpret_cast<const float4*>(dh), gate, gate + quads, out, out + quads,
            static_cast<Index>(rows), static_cast<Index>(quads), static_cast<Index>(2 * quads));
  });
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_forward_fused_bf16(const std::uint16_t* gate_up, std::uint16_t* h, std::int64_t rows,
                               std::int64_t width, void* stream) {
  require(width % 4 == 0 && aligned(gate_up, 8) && aligned(h, 8), "swiglu_forward_fused_bf16",
          "the width must be a multiple of 4 and the buffers aligned");
  if (rows * width == 0) return;
  const std::int64_t quads = width / 4, total = rows * quads;
  const auto* gate = reinterpret_cast<const uint2*>(gate_up);
  with_index_for(rows * 2 * quads, [&](auto zero) {
    using Index = decltype(zero);
    swiglu_forward_quads<Index, uint2, uint2>
        <<<quad_blocks(total), threads, 0, as_stream(stream)>>>(
            gate, gate + quads, reinterpret_cast<uint2*>(h), static_cast<Index>(rows),
            static_cast<Index>(quads), static_cast<Index>(2 * quads));
  });
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_backward_fused_bf16(const std::uint16_t* dh, const std::uint16_t* gate_up,
                                std::uint16_t* dgate_up, std::int64_t rows, std::int64_t width,
                                void* stream) {
  require(width % 4 == 0 && aligned(dh, 8) && aligned(gate_up, 8) && aligned(dgate_up, 8),
          "swiglu_backward_fused_bf16",
          "the width must be a multiple of 4 and the buffers aligned");
  if (rows * width == 0) return;
  const std::int64_t quads = width / 4, total = rows * quads;
  const auto* gate = reinterpret_cast<const uint2*>(gate_up);
  auto* out = reinterpret_cast<uint2*>(dgate_up);
  with_index_for(rows * 2 * quads, [&](auto zero) {
    using Index = decltype(zero);
    swiglu_backward_quads_bf16<Index, uint2><<<quad_blocks(total), threads, 0, as_stream(stream)>>>(
        reinterpret_cast<const uint2*>(dh), gate, gate + quads, out, out + quads,
        static_cast<Index>(rows), static_cast<Index>(quads), static_cast<Index>(2 * quads));
  });
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
