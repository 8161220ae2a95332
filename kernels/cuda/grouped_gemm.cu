#include "kernels/cuda/grouped_gemm.cuh"
#include "kernels/cuda/grouped_staging.cuh"
#include "troupe_build_config.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

namespace troupe::kernels::cuda {

namespace {

using namespace grouped;

// NOTES: a 64 x 64 output tile per block of 256 threads, 4 x 4 per thread, K in steps of 16
// through shared memory: a plain FP32 SGEMM tiling on the CUDA cores (the parity path's
// precision). What makes it a grouped GEMM is the tile scheduler: row tiles never straddle two
// experts, and each block finds its expert from the offsets on the device.
constexpr int step = 16;
constexpr int threads = 256;

template <pass P>
__global__ void __launch_bounds__(threads) grouped_kernel(arguments args) {
  __shared__ float as[step][tile + 4];
  __shared__ float bs[step][tile + 4];
  __shared__ std::int64_t tile_group, tile_first;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  // The tile: output rows [m0, m_end) and columns [n0, n0 + 64), reduction length `depth`.
  block_tile t;
  if (!block_tile_of<P>(args, tile_group, tile_first, t)) return;
  const std::int64_t group = t.group, m0 = t.m0, m_end = t.m_end, depth = t.depth,
                     r_begin = t.r_begin;
  const std::int64_t n0 = static_cast<std::int64_t>(blockIdx.x) * tile;
  const std::int64_t out_cols = P == pass::fprop ? args.n : args.k;
  const float* w = P == pass::wgrad ? nullptr : args.weights.first[group];
  float acc[4][4] = {};
  for (std::int64_t k0 = 0; k0 < depth; k0 += step) {
    // A tile: as[kk][i] = A(m0 + i, k0 + kk).
    for (int l = tid; l < tile * step; l += threads) {
      int i, kk;
      if constexpr (P == pass::wgrad) {
        kk = l / tile, i = l % tile;  // dy[r, n]: contiguous along i (n)
      } else {
        i = l / step, kk = l % step;  // x / dy rows: contiguous along kk
      }
      const std::int64_t row = m0 + i, col = k0 + kk;
      float value = 0.0f;
      if constexpr (P == pass::fprop) {
        if (row < m_end && col < depth) value = args.a[source_of(args.rows, row) * args.lda + col];
      } else if constexpr (P == pass::dgrad) {
        if (row < m_end && col < depth) value = args.a[row * args.lda + col];
      } else {
        if (row < m_end && col < depth) value = args.a[(r_begin + col) * args.lda + row];
      }
      as[kk][i] = value;
    }
    // B tile: bs[kk][j] = B(k0 + kk, n0 + j).
    for (int l = tid; l < tile * step; l += threads) {
      int j, kk;
      if constexpr (P == pass::fprop) {
        j = l / step, kk = l % step;  // W[n, k]: contiguous along kk
      } else {
        kk = l / tile, j = l % tile;  // W[n, k] rows (dgrad), x rows (wgrad): along j
      }
      const std::int64_t red = k0 + kk, col = n0 + j;
      float value = 0.0f;
      if (red < depth && col < out_cols) {
        if constexpr (P == pass::fprop)
          value = w[col * args.k + red];
        else if constexpr (P == pass::dgrad)
          value = w[red * args.k + col];
        else
          value = args.b[source_of(args.rows, r_begin + red) * args.ldb + col];
      }
      bs[kk][j] = value;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < step; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) a[u] = as[kk][ty * 4 + u];
#pragma unroll
      for (int v = 0; v < 4; ++v) b[v] = bs[kk][tx * 4 + v];
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int v = 0; v < 4; ++v) acc[u][v] += a[u] * b[v];
    }
    __syncthreads();
  }
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const std::int64_t row = m0 + ty * 4 + u;
    if (row >= m_end) continue;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const std::int64_t col = n0 + tx * 4 + v;
      if (col >= out_cols) continue;
      if constexpr (P == pass::wgrad) {  // the only writer of its tile: one block per expert
        float* out = args.weight_grads.first[group] + row * args.k + col;
        *out = args.accumulate ? *out + acc[u][v] : acc[u][v];
      } else {
        float* out = args.c + row * args.ldc + col;
        *out = args.accumulate ? *out + acc[u][v] : acc[u][v];
      }
    }
  }
}

void check_rows(const grouped_rows& rows, const char* kernel) {
  require(rows.groups > 0 && rows.groups < 65536, kernel, "the expert count must be in [1, 65535]");
  require(rows.rows >= 0 && rows.divisor > 0, kernel, "negative rows or a divisor below 1");
}

/// Checks a pre-rounded operand (grouped_gemm.hpp) before any launch.
void check_rounded(const void* rounded, std::int64_t ld, std::int64_t width, bool gathered,
                   gemm_math math, const char* kernel) {
  if (rounded == nullptr) return;
  require(math == gemm_math::bf16, kernel, "pre-rounded BF16 operands need the BF16 math");
  require(ld % 8 == 0 && width % 8 == 0 && aligned(rounded, 16), kernel,
          "a pre-rounded operand needs a leading dimension and a width of multiples of 8 and a "
          "16-byte aligned start");
  require(!gathered, kernel,
          "a pre-rounded operand is read in row order: rows.source must be null");
}

/// Checks a BF16 output request (grouped_gemm.hpp) before any launch.
void check_bf16_output(const void* out, bool accumulate, gemm_math math, const char* kernel) {
  if (out == nullptr) return;
  require(math == gemm_math::bf16, kernel, "BF16 outputs need the BF16 math");
  require(!accumulate, kernel, "BF16 outputs cannot accumulate");
}

/// The exact kernels read one weight table; two stacked tables run as two launches on the halves.
bool stacked(const weight_tables& w) {
  return w.second != nullptr;
}

std::atomic<grouped_gemm_kernels> chosen_kernels{grouped_gemm_kernels::automatic};

/// Whether the current device is a Hopper (sm_90), where the kernels built for sm_90a run.
bool hopper_device() {
  // NOTES: kept per device, as a process may drive GPUs of different kinds.
  static std::mutex guard;
  static std::map<int, bool> hopper;
  int ordinal = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&ordinal));
  std::lock_guard lock(guard);
  const auto found = hopper.find(ordinal);
  if (found != hopper.end()) return found->second;
  int major = 0, minor = 0;
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ordinal));
  return hopper[ordinal] = major == 9 && minor == 0;
}

/// What the environment's TROUPE_GROUPED_GEMM asks for (automatic when it is unset).
grouped_gemm_kernels environment_choice() {
  static const grouped_gemm_kernels choice = [] {
    const char* value = std::getenv("TROUPE_GROUPED_GEMM");
    if (value == nullptr || std::strcmp(value, "cutlass") == 0)
      return grouped_gemm_kernels::automatic;
    if (std::strcmp(value, "wgmma") == 0) return grouped_gemm_kernels::own;
    if (std::strcmp(value, "mma") == 0) return grouped_gemm_kernels::mma_sync;
    fail_kernel(std::string("TROUPE_GROUPED_GEMM is '") + value +
                "'; it takes 'cutlass' (CUTLASS's grouped GEMM on sm_90 where it was built, the "
                "default), 'wgmma' (troupe's own kernels: Hopper's warpgroup products where they "
                "are faster) or 'mma' (mma.sync for every pass)");
  }();
  return choice;
}

enum class products { mma_sync, wgmma, cutlass };

/// Whether CUTLASS's kernels were built, the device runs them and they take pass p's operands.
bool cutlass_takes([[maybe_unused]] pass p, [[maybe_unused]] const arguments& args,
                   [[maybe_unused]] const void* staging) {
#if TROUPE_HAVE_CUTLASS
  return hopper_device() && cutlass_supports(p, args, staging);
#else
  return false;
#endif
}

/// Which kernels run pass p of the BF16 math.
products products_for(pass p, const arguments& args, const void* staging) {
  grouped_gemm_kernels choice = chosen_kernels.load(std::memory_order_relaxed);
  if (choice == grouped_gemm_kernels::automatic) choice = environment_choice();
  if (choice == grouped_gemm_kernels::mma_sync || !hopper_device()) return products::mma_sync;
  if (choice == grouped_gemm_kernels::wgmma) return products::wgmma;
  if (choice == grouped_gemm_kernels::cutlass) {
    require(TROUPE_HAVE_CUTLASS, "grouped_gemm", "troupe was built without CUTLASS's headers");
    if (cutlass_takes(p, args, staging)) return products::cutlass;
  } else if (choice == grouped_gemm_kernels::automatic && cutlass_takes(p, args, staging)) {
    return products::cutlass;
  }
  // NOTES: troupe's own kernels, per pass, by `troupe bench experts` on the H200
  // (docs/benchmarks.md): Fprop and Dgrad are faster on wgmma; Wgrad is not (medium gate+up
  // 2.45 ms against mma.sync's 2.08: it is bound by adding the FP32 weight gradients, which the
  // wgmma kernel's shorter pipeline overlaps less), so it stays on mma.sync.
  return p == pass::wgrad ? products::mma_sync : products::wgmma;
}

/// Zeros the weight gradients of every group, or (`only_empty`) of the groups without rows:
/// blockIdx.y is the group and table (`tables` per group: first, second), a grid-stride loop
/// over its `elements` floats.
__global__ void zero_gradients_kernel(grouped_rows rows, gradient_tables grads, int tables,
                                      std::int64_t elements, bool only_empty) {
  const std::int64_t g = blockIdx.y / tables;
  if (only_empty && rows.offsets[g + 1] > rows.offsets[g]) return;
  float* out = blockIdx.y % tables == 0 ? grads.first[g] : grads.second[g];
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (aligned(out, 16) && elements % 4 == 0) {
    auto* quads = reinterpret_cast<float4*>(out);
    for (std::int64_t i = first; i < elements / 4; i += stride) quads[i] = float4{0, 0, 0, 0};
  } else {
    for (std::int64_t i = first; i < elements; i += stride) out[i] = 0.0f;
  }
}

/// zero_gradients_kernel over the groups' gradients ([n, k] each, or two [n / 2, k] tables).
void zero_gradients(const grouped_rows& rows, gradient_tables grads, std::int64_t n, std::int64_t k,
                    bool only_empty, void* stream) {
  const int tables = grads.second != nullptr ? 2 : 1;
  const std::int64_t elements = n / tables * k;
  if (rows.groups == 0 || elements == 0) return;
  require(rows.groups * tables <= 65535, "grouped_gemm_wgrad", "more than 65535 gradients");
  // NOTES: 16 blocks of 256 threads per gradient: 64 experts x 2 tables is 2,048 blocks, enough
  // to fill the GPU when every expert is zeroed.
  const dim3 grid(16, static_cast<unsigned>(rows.groups * tables));
  zero_gradients_kernel<<<grid, 256, 0, as_stream(stream)>>>(rows, grads, tables, elements,
                                                             only_empty);
  TROUPE_CUDA_LAUNCHED();
}

void launch_tensor_cores(pass p, const arguments& args, void* stream, void* staging) {
  switch (products_for(p, args, staging)) {
    case products::cutlass:
#if TROUPE_HAVE_CUTLASS
      return launch_cutlass(p, args, stream, staging);
#else
      [[fallthrough]];  // not reached: products_for never picks it
#endif
    case products::wgmma:
      return launch_wgmma(p, args, stream, staging);
    case products::mma_sync:
      break;
  }
  launch_bf16(p, args, stream, staging);
}

/// Bytes of staging for the BF16 math: the staged operands, and CUTLASS's arrays and workspace
/// where CUTLASS may run.
std::size_t bf16_staging_bytes(const grouped_rows& rows, std::int64_t n, std::int64_t k) {
  std::size_t bytes = staging_bytes(rows, n, k);
#if TROUPE_HAVE_CUTLASS
  if (hopper_device()) bytes = (bytes + 255) / 256 * 256 + cutlass_bytes(rows.groups, n, k);
#endif
  return bytes;
}

}  // namespace

void set_grouped_gemm_kernels(grouped_gemm_kernels choice) {
  chosen_kernels.store(choice, std::memory_order_relaxed);
}

bool cutlass_grouped_gemm_available() {
  return TROUPE_HAVE_CUTLASS && hopper_device();
}

std::size_t rounded_expert_weights_bytes(std::int64_t groups, std::int64_t n, std::int64_t k) {
  return rounded_weights_bytes(groups, n, k);
}

void round_expert_weights(weight_tables weights, std::int64_t groups, std::int64_t n,
                          std::int64_t k, void* out, void* stream) {
  require(groups > 0 && n >= 0 && k >= 0, "round_expert_weights", "bad shape");
  require(weights.second == nullptr || n % 2 == 0, "round_expert_weights",
          "stacked weights need an even n");
  if (n == 0 || k == 0) return;
  round_weights(weights, groups, n, k, out, stream);
}

void gather_rows_bf16(const grouped_rows& rows, const float* x, std::int64_t ldx, std::int64_t k,
                      void* out, void* stream) {
  check_rows(rows, "gather_rows_bf16");
  require(k % 8 == 0, "gather_rows_bf16", "k must be a multiple of 8");
  round_rows(gathered_rows{x, ldx, rows.source, rows.divisor}, rows.rows, k, k,
             static_cast<bf16*>(out), as_stream(stream));
}

std::size_t grouped_gemm_staging_bytes(const grouped_rows& rows, std::int64_t n, std::int64_t k,
                                       gemm_math math) {
  return math == gemm_math::bf16 ? bf16_staging_bytes(rows, n, k) : 0;
}

void grouped_gemm_fprop(const grouped_rows& rows, const float* x, std::int64_t ldx,
                        weight_tables weights, std::int64_t n, std::int64_t k, float* y,
                        std::int64_t ldy, bool accumulate, gemm_math math, void* stream,
                        void* staging, const void* x_bf16, void* y_bf16) {
  check_rows(rows, "grouped_gemm_fprop");
  check_rounded(x_bf16, ldx, k, rows.source != nullptr, math, "grouped_gemm_fprop");
  check_bf16_output(y_bf16, accumulate, math, "grouped_gemm_fprop");
  require(!stacked(weights) || n % 2 == 0, "grouped_gemm_fprop", "stacked weights need an even n");
  if (rows.rows == 0 || n == 0) return;
  if (math == gemm_math::bf16) {
    const stream_staging buffer(staging, bf16_staging_bytes(rows, n, k), as_stream(stream));
    return launch_tensor_cores(pass::fprop,
                               {rows, x, ldx, nullptr, 0, weights, nullptr, y, ldy, n, k,
                                accumulate, x_bf16, nullptr, y_bf16},
                               stream, buffer.data);
  }
  if (stacked(weights)) {
    grouped_gemm_fprop(rows, x, ldx, weights.first, n / 2, k, y, ldy, accumulate, math, stream);
    grouped_gemm_fprop(rows, x, ldx, weights.second, n / 2, k, y + n / 2, ldy, accumulate, math,
                       stream);
    return;
  }
  const arguments args{rows, x, ldx, nullptr, 0, weights, nullptr, y, ldy, n, k, accumulate};
  grouped_kernel<pass::fprop>
      <<<dim3(blocks_for(n, tile), row_tiles(rows)), threads, 0, as_stream(stream)>>>(args);
  TROUPE_CUDA_LAUNCHED();
}

void grouped_gemm_dgrad(const grouped_rows& rows, const float* dy, std::int64_t lddy,
                        weight_tables weights, std::int64_t n, std::int64_t k, float* dx,
                        std::int64_t lddx, bool accumulate, gemm_math math, void* stream,
                        void* staging, const void* dy_bf16, void* dx_bf16) {
  check_rows(rows, "grouped_gemm_dgrad");
  check_rounded(dy_bf16, lddy, n, false, math, "grouped_gemm_dgrad");
  check_bf16_output(dx_bf16, accumulate, math, "grouped_gemm_dgrad");
  require(!stacked(weights) || n % 2 == 0, "grouped_gemm_dgrad", "stacked weights need an even n");
  if (rows.rows == 0 || k == 0) return;
  grouped_rows direct = rows;
  direct.source = nullptr;
  if (math == gemm_math::bf16) {
    const stream_staging buffer(staging, bf16_staging_bytes(direct, n, k), as_stream(stream));
    return launch_tensor_cores(pass::dgrad,
                               {direct, dy, lddy, nullptr, 0, weights, nullptr, dx, lddx, n, k,
                                accumulate, dy_bf16, nullptr, dx_bf16},
                               stream, buffer.data);
  }
  if (stacked(weights)) {
    grouped_gemm_dgrad(rows, dy, lddy, weights.first, n / 2, k, dx, lddx, accumulate, math, stream);
    grouped_gemm_dgrad(rows, dy + n / 2, lddy, weights.second, n / 2, k, dx, lddx, true, math,
                       stream);
    return;
  }
  const arguments args{direct, dy, lddy, nullptr, 0, weights, nullptr, dx, lddx, n, k, accumulate};
  grouped_kernel<pass::dgrad>
      <<<dim3(blocks_for(k, tile), row_tiles(rows)), threads, 0, as_stream(stream)>>>(args);
  TROUPE_CUDA_LAUNCHED();
}

bool grouped_gemm_wgrad(const grouped_rows& rows, const float* dy, std::int64_t lddy,
                        const float* x, std::int64_t ldx, gradient_tables weight_grads,
                        std::int64_t n, std::int64_t k, gemm_math math, void* stream, void* staging,
                        bool onto_zeros, const void* dy_bf16, const void* x_bf16, bool overwrite,
                        double* squares) {
  check_rows(rows, "grouped_gemm_wgrad");
  check_rounded(dy_bf16, lddy, n, false, math, "grouped_gemm_wgrad");
  check_rounded(x_bf16, ldx, k, rows.source != nullptr, math, "grouped_gemm_wgrad");
  require(weight_grads.second == nullptr || n % 2 == 0, "grouped_gemm_wgrad",
          "stacked gradients need an even n");
  if (n == 0 || k == 0) return false;
  if (rows.rows == 0) {
    if (overwrite) zero_gradients(rows, weight_grads, n, k, false, stream);
    return false;
  }
  if (math == gemm_math::bf16) {
    const stream_staging buffer(staging, bf16_staging_bytes(rows, n, k), as_stream(stream));
    arguments args{rows,         dy,      lddy, x, ldx, nullptr,
                   weight_grads, nullptr, 0,    n, k,   !(onto_zeros || overwrite),
                   dy_bf16,      x_bf16};
    const bool cutlass = products_for(pass::wgrad, args, buffer.data) == products::cutlass;
    // NOTES: CUTLASS's kernel stores every element of an expert's gradient that has rows and
    // none of one without; troupe's kernels add where a tile has several writers. So only the
    // empty experts are zeroed before CUTLASS, every expert before the others. The square sums
    // come from CUTLASS's epilogue, and only where it stores the whole gradient (an expert
    // without rows then holds zeros): not where it adds to an earlier micro-batch's.
    if (overwrite) zero_gradients(rows, weight_grads, n, k, cutlass, stream);
    const bool sums = squares != nullptr && cutlass && !args.accumulate;
    if (sums) args.squares = squares;
    launch_tensor_cores(pass::wgrad, args, stream, buffer.data);
    return sums;
  }
  if (overwrite) {  // the FP32 kernels below add
    zero_gradients(rows, weight_grads, n, k, false, stream);
    onto_zeros = true;
  }
  if (weight_grads.second != nullptr) {
    grouped_gemm_wgrad(rows, dy, lddy, x, ldx, weight_grads.first, n / 2, k, math, stream, nullptr,
                       onto_zeros);
    grouped_gemm_wgrad(rows, dy + n / 2, lddy, x, ldx, weight_grads.second, n / 2, k, math, stream,
                       nullptr, onto_zeros);
    return false;
  }
  const arguments args{rows,         dy,      lddy, x, ldx, nullptr,
                       weight_grads, nullptr, 0,    n, k,   !onto_zeros};
  grouped_kernel<pass::wgrad>
      <<<dim3(blocks_for(k, tile), blocks_for(n, tile), static_cast<unsigned>(rows.groups)),
         threads, 0, as_stream(stream)>>>(args);
  TROUPE_CUDA_LAUNCHED();
  return false;
}

}  // namespace troupe::kernels::cuda
