#include "kernels/cuda/attention_packing.hpp"

#include <algorithm>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/mma.cuh"

namespace troupe::kernels::cuda {

namespace {

using flash::row_of;
using mma::bf16;

struct pack_jobs {
  attention_pack job[max_attention_pack_jobs];
};
struct unpack_jobs {
  attention_unpack job[max_attention_pack_jobs];
};

__device__ inline float* row_of(const attention_result& x, std::int64_t b, std::int64_t h,
                                std::int64_t row) {
  return x.data + b * x.batch_stride + h * x.head_stride + row * x.row_stride;
}

/// f(row, c, b, h, i) for every piece of four columns [c, c + 4) of `width` and every packed row
/// (the row's sequence b, head h and position i), as a grid-stride loop.
template <class F>
__device__ void for_each_quad(const attention_problem& p, int width, F&& f) {
  const int quads = width / 4;
  const std::int64_t total = attention_slice_rows(p) * quads;
  for (std::int64_t index = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       index < total; index += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t row = index / quads, bh = row / p.length;
    f(row, static_cast<int>(index % quads) * 4, bh / p.heads, bh % p.heads, row % p.length);
  }
}

/// blockIdx.y picks the job.
__global__ void pack_kernel(attention_problem p, pack_jobs jobs) {
  const attention_pack& j = jobs.job[blockIdx.y];
  for_each_quad(p, j.width,
                [&](std::int64_t row, int c, std::int64_t b, std::int64_t h, std::int64_t i) {
                  const float* from = row_of(j.from, b, h, i) + c;
                  const float4 v = reinterpret_cast<std::uintptr_t>(from) % 16 == 0
                                       ? *reinterpret_cast<const float4*>(from)
                                       : float4{from[0], from[1], from[2], from[3]};
                  mma::store4(reinterpret_cast<bf16*>(j.to) + row * j.d + j.col0 + c, v);
                });
}

__global__ void unpack_kernel(attention_problem p, unpack_jobs jobs) {
  const attention_unpack& j = jobs.job[blockIdx.y];
  for_each_quad(
      p, j.width, [&](std::int64_t row, int c, std::int64_t b, std::int64_t h, std::int64_t i) {
        // NOTES: d, col0 and c are multiples of 4, so the four BF16 values are one 8-byte word.
        const uint2 packed = *reinterpret_cast<const uint2*>(j.from + row * j.d + j.col0 + c);
        const float2 low = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed.x));
        const float2 high = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed.y));
        float* to = row_of(j.to, b, h, i) + c;
        if (reinterpret_cast<std::uintptr_t>(to) % 16 == 0) {
          *reinterpret_cast<float4*>(to) = float4{low.x, low.y, high.x, high.y};
        } else {
          to[0] = low.x, to[1] = low.y, to[2] = high.x, to[3] = high.y;
        }
      });
}

/// The packed side of a job, whose 8-byte words the kernels move.
const void* packed_side(const attention_pack& j) {
  return j.to;
}
const void* packed_side(const attention_unpack& j) {
  return j.from;
}

template <class Jobs, class Job>
void launch(const attention_problem& p, const Job* given, int count, cudaStream_t stream,
            void (*kernel)(attention_problem, Jobs)) {
  require(count >= 0 && count <= max_attention_pack_jobs, "attention packing",
          "at most six operands per launch");
  Jobs jobs{};
  int widest = 0;
  for (int i = 0; i < count; ++i) {
    const Job& j = given[i];
    require(j.width >= 0 && j.col0 >= 0 && j.col0 + j.width <= j.d, "attention packing",
            "the columns must lie inside the packed rows");
    require(j.width % 4 == 0 && j.col0 % 4 == 0 && j.d % 4 == 0, "attention packing",
            "widths, column offsets and packed widths must be multiples of 4");
    require(aligned(packed_side(j), 8), "attention packing",
            "the packed rows must start on an 8-byte boundary");
    jobs.job[i] = given[i];
    widest = std::max(widest, given[i].width);
  }
  const std::int64_t work = attention_slice_rows(p) * (widest / 4);
  if (work == 0 || count == 0) return;
  kernel<<<dim3(static_cast<unsigned>(std::min<std::int64_t>((work + 255) / 256, 4096)),
                static_cast<unsigned>(count)),
           256, 0, stream>>>(p, jobs);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace

void pack_attention_bf16(const attention_problem& p, const attention_pack* jobs, int count,
                         void* stream) {
  launch(p, jobs, count, as_stream(stream), pack_kernel);
}

void unpack_attention_bf16(const attention_problem& p, const attention_unpack* jobs, int count,
                           void* stream) {
  launch(p, jobs, count, as_stream(stream), unpack_kernel);
}

}  // namespace troupe::kernels::cuda
