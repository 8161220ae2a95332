#include "kernels/cuda/cublaslt_gemm.hpp"
#include "kernels/cuda/convert.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/cublaslt_api.hpp"

namespace troupe::kernels::cuda {

namespace {

cudaDataType_t cuda_type(gemm_dtype type) {
  switch (type) {
    case gemm_dtype::f32:
      return CUDA_R_32F;
    case gemm_dtype::bf16:
      return CUDA_R_16BF;
    case gemm_dtype::e4m3:
      return CUDA_R_8F_E4M3;
  }
  return CUDA_R_32F;
}

const char* name(gemm_dtype type) {
  switch (type) {
    case gemm_dtype::f32:
      return "f32";
    case gemm_dtype::bf16:
      return "bf16";
    case gemm_dtype::e4m3:
      return "e4m3";
  }
  return "?";
}

/// Everything that decides the algorithm; pointers and alpha do not.
struct problem_key {
  int kind = 0;  // 0: plain, 1: block-scaled fp8
  gemm_dtype ta{}, tb{}, tc{};
  bool transpose_a = false, transpose_b = false, beta_zero = true;
  std::int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
  int scaling_a = 0, scaling_b = 0;
  gemm_math math = gemm_math::exact;
  auto tie() const {
    return std::tie(kind, ta, tb, tc, transpose_a, transpose_b, beta_zero, m, n, k, lda, ldb, ldc,
                    scaling_a, scaling_b, math);
  }
  bool operator<(const problem_key& other) const { return tie() < other.tie(); }
};

/// The descriptors of one problem and the algorithm chosen for it.
struct plan {
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t first = nullptr, second = nullptr, output = nullptr;
  cublasLtMatmulAlgo_t algorithm{};
  ~plan() {
    if (output != nullptr) cublaslt().layout_destroy(output);
    if (second != nullptr) cublaslt().layout_destroy(second);
    if (first != nullptr) cublaslt().layout_destroy(first);
    if (operation != nullptr) cublaslt().desc_destroy(operation);
  }
};

template <class T>
void set(cublasLtMatmulDesc_t operation, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  TROUPE_CUBLAS_CHECK(cublaslt().desc_set(operation, attribute, &value, sizeof(value)));
}

cublasLtMatrixLayout_t layout(gemm_dtype type, std::int64_t rows, std::int64_t cols,
                              std::int64_t ld) {
  cublasLtMatrixLayout_t result = nullptr;
  TROUPE_CUBLAS_CHECK(cublaslt().layout_create(&result, cuda_type(type),
                                               static_cast<std::uint64_t>(rows),
                                               static_cast<std::uint64_t>(cols), ld));
  return result;
}

cublasLtMatmulMatrixScale_t scale_mode(fp8_scaling scaling) {
  return scaling == fp8_scaling::tiles_1x128 ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
                                             : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
}

}  // namespace

fp8_scale_layout scale_layout(fp8_scaling scaling, std::int64_t outer, std::int64_t k) {
  const std::int64_t k_tiles = (k + 127) / 128;
  fp8_scale_layout result;
  if (scaling == fp8_scaling::tiles_1x128) {
    // VEC128_32F: [k_tiles][outer], the operand's rows contiguous (the transpose of the natural
    // per-token layout).
    result.stride_outer = 1;
    result.stride_k = outer;
    result.count = outer * k_tiles;
  } else {
    // BLK128x128_32F: [outer blocks][k_tiles rounded up to 4], the K blocks contiguous.
    const std::int64_t padded = (k_tiles + 3) / 4 * 4;
    result.stride_outer = padded;
    result.stride_k = 1;
    result.count = (outer + 127) / 128 * padded;
  }
  return result;
}

struct cublaslt_gemm::state {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  void* staging = nullptr;  // BF16 copies of f32 operands (gemm_math::bf16), stream-ordered
  std::size_t staging_bytes = 0;
  std::map<problem_key, std::unique_ptr<plan>> plans;
};

cublaslt_gemm::cublaslt_gemm(int ordinal, void* stream, std::size_t workspace_bytes)
    : ordinal_(ordinal), stream_(stream), state_(std::make_unique<state>()) {
  TROUPE_CUDA_CHECK(cudaSetDevice(ordinal));
  TROUPE_CUBLAS_CHECK(cublaslt().create(&state_->handle));
  state_->workspace_bytes = workspace_bytes;
  if (workspace_bytes > 0) TROUPE_CUDA_CHECK(cudaMalloc(&state_->workspace, workspace_bytes));
}

cublaslt_gemm::~cublaslt_gemm() {
  (void)cudaSetDevice(ordinal_);
  // NOTES: work enqueued on the stream may still read the workspace.
  (void)cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  state_->plans.clear();
  if (state_->workspace != nullptr) (void)cudaFree(state_->workspace);
  if (state_->staging != nullptr) (void)cudaFree(state_->staging);
  if (state_->handle != nullptr) (void)cublaslt().destroy(state_->handle);
}

std::size_t cublaslt_gemm::cached_algorithms() const {
  return state_->plans.size();
}

namespace {

/// cuBLASLt's heuristic answers for the plan's descriptors (at most `count`), best first.
std::vector<cublasLtMatmulHeuristicResult_t> heuristics(cublasLtHandle_t handle, const plan& p,
                                                        std::size_t workspace_bytes, int count,
                                                        const std::string& problem) {
  cublasLtMatmulPreference_t preference = nullptr;
  TROUPE_CUBLAS_CHECK(cublaslt().preference_create(&preference));
  const std::uint64_t bytes = workspace_bytes;
  TROUPE_CUBLAS_CHECK(cublaslt().preference_set(
      preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bytes, sizeof(bytes)));
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<std::size_t>(count));
  int found = 0;
  const cublasStatus_t status =
      cublaslt().heuristic(handle, p.operation, p.first, p.second, p.output, p.output, preference,
                           count, results.data(), &found);
  cublaslt().preference_destroy(preference);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0)
    fail_kernel(fmt::format("cuBLASLt has no algorithm for {} on cuda:{}: {}", problem,
                            current_device_for_messages(),
                            status != CUBLAS_STATUS_SUCCESS ? cublaslt().status_string(status)
                                                            : "the heuristic found none"));
  results.resize(static_cast<std::size_t>(found));
  return results;
}

/// How many of the heuristic's answers to time (TROUPE_GEMM_TUNE=N; unset, empty or 0: take the
/// first). Anything but a whole number from 0 to 32 is an error that names the variable.
int tuning_candidates() {
  static const int count = [] {
    const char* value = std::getenv("TROUPE_GEMM_TUNE");
    if (value == nullptr || *value == '\0') return 0;
    const std::string_view text(value);
    int n = -1;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (error != std::errc() || end != text.data() + text.size() || n < 0 || n > 32)
      fail_kernel(fmt::format(
          "TROUPE_GEMM_TUNE={}: give how many of cuBLASLt's candidates to time per GEMM shape, a "
          "whole number from 0 (off) to 32",
          text));
    return n;
  }();
  return count;
}

/// One problem's operands, for timing candidates (the output goes to a scratch buffer).
struct timed_operands {
  const void* first;
  const void* second;
  const void* c;
  std::size_t c_bytes;
  float alpha, beta;
};

/// The fastest of the heuristic's first TROUPE_GEMM_TUNE answers, by CUDA-event timing into a
/// scratch output (the caller's C is read, never written), else the heuristic's first answer.
void choose(cublasLtHandle_t handle, void* workspace, std::size_t workspace_bytes, cudaStream_t s,
            plan& p, const timed_operands& o, const std::string& problem) {
  const int tune = tuning_candidates();
  const auto candidates = heuristics(handle, p, workspace_bytes, std::max(tune, 1), problem);
  p.algorithm = candidates.front().algo;
  if (tune <= 1 || candidates.size() == 1) return;
  void* scratch = nullptr;
  if (cudaMallocAsync(&scratch, o.c_bytes, s) != cudaSuccess) {
    (void)cudaGetLastError();  // no room for a scratch output: keep the heuristic's first answer
    return;
  }
  cudaEvent_t begin = nullptr, end = nullptr;
  TROUPE_CUDA_CHECK(cudaEventCreate(&begin));
  TROUPE_CUDA_CHECK(cudaEventCreate(&end));
  float best = 0.0f;
  for (const auto& candidate : candidates) {
    const auto run = [&] {
      return cublaslt().matmul(handle, p.operation, &o.alpha, o.first, p.first, o.second, p.second,
                               &o.beta, o.c, p.output, scratch, p.output, &candidate.algo,
                               workspace, workspace_bytes, s);
    };
    if (run() != CUBLAS_STATUS_SUCCESS) continue;
    constexpr int runs = 5;
    TROUPE_CUDA_CHECK(cudaEventRecord(begin, s));
    for (int r = 0; r < runs; ++r) (void)run();
    TROUPE_CUDA_CHECK(cudaEventRecord(end, s));
    TROUPE_CUDA_CHECK(cudaEventSynchronize(end));
    float ms = 0.0f;
    TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ms, begin, end));
    if (best == 0.0f || ms < best) {
      best = ms;
      p.algorithm = candidate.algo;
    }
  }
  TROUPE_CUDA_CHECK(cudaEventDestroy(begin));
  TROUPE_CUDA_CHECK(cudaEventDestroy(end));
  TROUPE_CUDA_CHECK(cudaFreeAsync(scratch, s));
}

}  // namespace

void cublaslt_gemm::gemm(const gemm_matrix& a, bool transpose_a, const gemm_matrix& b,
                         bool transpose_b, gemm_matrix c, float alpha, float beta, gemm_math math) {
  const std::int64_t m = transpose_a ? a.cols : a.rows, k = transpose_a ? a.rows : a.cols;
  const std::int64_t kb = transpose_b ? b.cols : b.rows, n = transpose_b ? b.rows : b.cols;
  // NOTES: formatted only when a message needs it, not on every call.
  const auto problem = [&] {
    return fmt::format("{}[{}x{}]{} x {}[{}x{}]{} -> {}[{}x{}]", name(a.type), a.rows, a.cols,
                       transpose_a ? "^T" : "", name(b.type), b.rows, b.cols,
                       transpose_b ? "^T" : "", name(c.type), c.rows, c.cols);
  };
  if (k != kb || c.rows != m || c.cols != n)
    fail_kernel(fmt::format("GEMM {}: the shapes do not fit (m = {}, k = {} and {}, n = {})",
                            problem(), m, k, kb, n));
  if (a.type != b.type || a.type == gemm_dtype::e4m3 ||
      (c.type == gemm_dtype::bf16 && a.type != gemm_dtype::bf16) || c.type == gemm_dtype::e4m3)
    fail_kernel(fmt::format(
        "GEMM {}: the types must be f32 x f32 -> f32, or bf16 x bf16 -> bf16 or f32", problem()));
  if (a.ld < a.cols || b.ld < b.cols || c.ld < c.cols)
    fail_kernel(fmt::format("GEMM {}: a leading dimension is below its row length", problem()));
  if (m == 0 || n == 0) return;
  if (a.type == gemm_dtype::f32 && math == gemm_math::bf16 && k > 0) {
    // NOTES: cuBLASLt's CUBLAS_COMPUTE_32F_FAST_16BF on f32 operands converts inside its kernels
    // and reached 135-180 TFLOP/s on the H200 on the model's shapes; rounding both operands to
    // BF16 first (one pass each, the same round-to-nearest-even) lets it run its native BF16
    // kernels. The staging buffer belongs to this stream: the next GEMM reuses it in stream
    // order, after this one has read it.
    const std::size_t a_elements = static_cast<std::size_t>(a.rows * a.cols),
                      bytes = 2 * ((a_elements + 7) / 8 * 8 +
                                   static_cast<std::size_t>(b.rows * b.cols));
    const auto s = static_cast<cudaStream_t>(stream_);
    TROUPE_CUDA_CHECK(cudaSetDevice(ordinal_));
    if (state_->staging_bytes < bytes) {
      if (state_->staging != nullptr) TROUPE_CUDA_CHECK(cudaFreeAsync(state_->staging, s));
      state_->staging = nullptr;
      state_->staging_bytes = 0;
      TROUPE_CUDA_CHECK(cudaMallocAsync(&state_->staging, bytes, s));
      state_->staging_bytes = bytes;
    }
    auto* a16 = static_cast<std::uint16_t*>(state_->staging);
    std::uint16_t* b16 = a16 + (a_elements + 7) / 8 * 8;  // 16-byte aligned rows for cuBLASLt
    f32_to_bf16_rows(static_cast<const float*>(a.data), a.ld, a16, a.rows, a.cols, stream_);
    f32_to_bf16_rows(static_cast<const float*>(b.data), b.ld, b16, b.rows, b.cols, stream_);
    return gemm({a16, gemm_dtype::bf16, a.rows, a.cols, a.cols}, transpose_a,
                {b16, gemm_dtype::bf16, b.rows, b.cols, b.cols}, transpose_b, c, alpha, beta);
  }

  const problem_key key{.ta = a.type,
                        .tb = b.type,
                        .tc = c.type,
                        .transpose_a = transpose_a,
                        .transpose_b = transpose_b,
                        .beta_zero = beta == 0.0f,
                        .m = m,
                        .n = n,
                        .k = k,
                        .lda = a.ld,
                        .ldb = b.ld,
                        .ldc = c.ld,
                        .math = a.type == gemm_dtype::f32 ? math : gemm_math::exact};
  TROUPE_CUDA_CHECK(cudaSetDevice(ordinal_));
  auto& slot = state_->plans[key];
  if (!slot) {
    auto p = std::make_unique<plan>();
    // NOTES: row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major
    // X is the column-major X^T over the same memory: so cuBLASLt's first operand is B's memory
    // (transposed when B is), its second A's, and its output is C's memory as an n x m matrix.
    const cublasComputeType_t compute =
        key.math == gemm_math::bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    TROUPE_CUBLAS_CHECK(cublaslt().desc_create(&p->operation, compute, CUDA_R_32F));
    set(p->operation, CUBLASLT_MATMUL_DESC_TRANSA, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N);
    set(p->operation, CUBLASLT_MATMUL_DESC_TRANSB, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N);
    p->first = layout(b.type, b.cols, b.rows, b.ld);
    p->second = layout(a.type, a.cols, a.rows, a.ld);
    p->output = layout(c.type, n, m, c.ld);
    const std::size_t c_bytes =
        static_cast<std::size_t>(c.ld * (m - 1) + n) * (c.type == gemm_dtype::f32 ? 4 : 2);
    choose(state_->handle, state_->workspace, state_->workspace_bytes,
           static_cast<cudaStream_t>(stream_), *p, {b.data, a.data, c.data, c_bytes, alpha, beta},
           problem());
    slot = std::move(p);
  }
  const plan& p = *slot;
  TROUPE_CUBLAS_CHECK(cublaslt().matmul(
      state_->handle, p.operation, &alpha, b.data, p.first, a.data, p.second, &beta, c.data,
      p.output, const_cast<void*>(c.data), p.output, &p.algorithm, state_->workspace,
      state_->workspace_bytes, static_cast<cudaStream_t>(stream_)));
}

void cublaslt_gemm::fp8_gemm(const fp8_operand& a, const fp8_operand& b, std::int64_t k,
                             gemm_matrix c, float alpha, float beta) {
  const std::int64_t m = a.outer, n = b.outer;
  // NOTES: formatted only when a message needs it, not on every call.
  const auto problem = [&] {
    return fmt::format("e4m3[{}x{}] x e4m3[{}x{}]^T -> {}[{}x{}] (block-scaled)", m, k, n, k,
                       name(c.type), c.rows, c.cols);
  };
  if (c.rows != m || c.cols != n)
    fail_kernel(fmt::format("GEMM {}: the output's shape does not fit", problem()));
  if (c.type == gemm_dtype::e4m3)
    fail_kernel(fmt::format("GEMM {}: the output must be bf16 or f32", problem()));
  if (k % 16 != 0 || a.ld % 16 != 0 || b.ld % 16 != 0 || a.ld < k || b.ld < k)
    fail_kernel(fmt::format(
        "GEMM {}: K and the leading dimensions must be multiples of 16 and at least K (lda = "
        "{}, ldb = {})",
        problem(), a.ld, b.ld));
  if (a.scaling == fp8_scaling::blocks_128x128 && b.scaling == fp8_scaling::blocks_128x128)
    fail_kernel(
        fmt::format("GEMM {}: at most one operand may have 128x128 block scales", problem()));
  // cuBLASLt's rules for block-scaled FP8 on sm_90 (its m is our n and its n our m).
  const std::int64_t n_multiple = c.type == gemm_dtype::bf16 ? 8 : 4;
  if (m % 4 != 0 || n % n_multiple != 0)
    fail_kernel(fmt::format(
        "GEMM {}: cuBLASLt's block-scaled FP8 needs m a multiple of 4 and n a multiple of {}",
        problem(), n_multiple));
  const auto aligned16 = [](const void* p) {
    return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
  };
  if (!aligned16(a.codes) || !aligned16(b.codes) || !aligned16(a.scale) || !aligned16(b.scale) ||
      !aligned16(c.data))
    fail_kernel(fmt::format(
        "GEMM {}: the codes, scales and output must start on 16-byte boundaries", problem()));
  if (m == 0 || n == 0) return;

  const problem_key key{.kind = 1,
                        .ta = gemm_dtype::e4m3,
                        .tb = gemm_dtype::e4m3,
                        .tc = c.type,
                        .beta_zero = beta == 0.0f,
                        .m = m,
                        .n = n,
                        .k = k,
                        .lda = a.ld,
                        .ldb = b.ld,
                        .ldc = c.ld,
                        .scaling_a = static_cast<int>(a.scaling),
                        .scaling_b = static_cast<int>(b.scaling)};
  TROUPE_CUDA_CHECK(cudaSetDevice(ordinal_));
  auto& slot = state_->plans[key];
  if (!slot) {
    auto p = std::make_unique<plan>();
    // NOTES: FP8 on Hopper takes only the "TN" form: cuBLASLt's first operand transposed, its
    // second not, both K-contiguous. Row-major C = A B^T with A[m, K] and B[n, K] is exactly that
    // with B's memory first. cuBLASLt's A scale is therefore B's, and its B scale A's.
    TROUPE_CUBLAS_CHECK(cublaslt().desc_create(&p->operation, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set(p->operation, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
    set(p->operation, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
    set(p->operation, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, scale_mode(b.scaling));
    set(p->operation, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, scale_mode(a.scaling));
    p->first = layout(gemm_dtype::e4m3, k, n, b.ld);
    p->second = layout(gemm_dtype::e4m3, k, m, a.ld);
    p->output = layout(c.type, n, m, c.ld);
    // Scale pointers are part of the descriptor the heuristic sees; any valid ones do.
    set(p->operation, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, static_cast<const void*>(b.scale));
    set(p->operation, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, static_cast<const void*>(a.scale));
    p->algorithm = heuristics(state_->handle, *p, state_->workspace_bytes, 1, problem())[0].algo;
    slot = std::move(p);
  }
  const plan& p = *slot;
  set(p.operation, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, static_cast<const void*>(b.scale));
  set(p.operation, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, static_cast<const void*>(a.scale));
  TROUPE_CUBLAS_CHECK(cublaslt().matmul(
      state_->handle, p.operation, &alpha, b.codes, p.first, a.codes, p.second, &beta, c.data,
      p.output, const_cast<void*>(c.data), p.output, &p.algorithm, state_->workspace,
      state_->workspace_bytes, static_cast<cudaStream_t>(stream_)));
}

}  // namespace troupe::kernels::cuda
