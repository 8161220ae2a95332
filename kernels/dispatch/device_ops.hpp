#pragma once

// The model's ops on whichever device an exec context (the C ABI's) names: the host's kernels
// (kernels/cpu, on the context's worker pool) or CUDA's (kernels/cuda, on the context's stream).
// A layer written against these, its buffers included, runs on both, whether it is a plugin or
// one of the runtime's own layers; its GEMMs go through the context's provider
// (kernels/cpu/linear.hpp), which follows the device too. Failures throw std::runtime_error
// (plugins turn them into error statuses with guarded()). A build without CUDA refuses a GPU
// context with a message that says so.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/router.hpp"
#include "kernels/dispatch/op_timing.hpp"
#include "runtime/abi/troupe_plugin.h"

namespace troupe::kernels {

/// Whether `context` computes on a CUDA device.
bool on_gpu(const troupe_exec_context* context);

/// body(begin, end) over chunks of [0, count) on the context's worker pool.
template <class F>
void parallel_for(const troupe_exec_context* context, std::int64_t count, std::int64_t min_chunk,
                  F&& body) {
  auto trampoline = [](void* arg, std::int64_t begin, std::int64_t end) {
    (*static_cast<std::remove_reference_t<F>*>(arg))(begin, end);
  };
  context->pool->parallel_for(context->pool->self, count, min_chunk, trampoline, &body);
}

/// A copy of `context` whose worker pool is a single thread that runs every range inline: for the
/// body of one task among many parallel ones (one routed expert), whose GEMMs and elementwise ops
/// then run whole on the task's thread instead of splitting again.
troupe_exec_context serial_context(const troupe_exec_context* context);

/// body(task) for every task in [0, count) on the context's worker pool, the tasks taken one at a
/// time from a shared counter in the order given (the largest first balances uneven tasks). Each
/// body gets serial_context(context).
template <class F>
void parallel_tasks(const troupe_exec_context* context, std::span<const std::int64_t> order,
                    F&& body) {
  const troupe_exec_context serial = serial_context(context);
  std::atomic<std::size_t> next{0};
  const std::int64_t lanes = std::max<std::int64_t>(
      1, std::min<std::int64_t>(context->pool->num_threads, std::ssize(order)));
  parallel_for(context, lanes, 1, [&](std::int64_t, std::int64_t) {
    for (std::size_t i = next++; i < order.size(); i = next++) body(&serial, order[i]);
  });
}

/// Memory for `bytes` on the context's device from its allocator (on a GPU: the stream-ordered
/// pool); throws std::bad_alloc when there is none. Released with release_bytes.
void* allocate_bytes(const troupe_exec_context* context, std::size_t bytes);
void release_bytes(const troupe_allocator* allocator, DLDevice device, void* pointer);

namespace ops {
/// Zeros `bytes` at `data`; op timing counts the fill for `function` (the caller).
void zero_bytes(const troupe_exec_context* context, void* data, std::size_t bytes,
                const char* function = TROUPE_OP_FUNCTION);
/// A copy between two places on the context's device.
void copy_bytes(const troupe_exec_context* context, void* dst, const void* src, std::size_t bytes);
/// dst (on the context's device) = src (host memory); waits for the copy on a GPU.
void copy_from_host(const troupe_exec_context* context, void* dst, const void* src,
                    std::size_t bytes);
/// dst (host memory) = src (on the context's device); waits for the context's stream on a GPU.
void copy_to_host(const troupe_exec_context* context, void* dst, const void* src,
                  std::size_t bytes);
}  // namespace ops

/// Ts on the context's device (host memory on the CPU), zero-filled when assigned and freed with
/// the array: what a plugin keeps between forward and backward, and its scratch.
template <class T>
class device_array {
 public:
  device_array() = default;
  ~device_array() { clear(); }
  device_array(device_array&& other) noexcept { *this = std::move(other); }
  device_array& operator=(device_array&& other) noexcept {
    if (this != &other) {
      clear();
      allocator_ = other.allocator_;
      device_ = other.device_;
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;

  /// `count` zeros on the context's device (the old contents are dropped); op timing counts the
  /// fill for `function` (the caller).
  void assign(const troupe_exec_context* context, std::size_t count,
              const char* function = TROUPE_OP_FUNCTION) {
    allocate(context, count);
    if (count > 0) ops::zero_bytes(context, data_, bytes(), function);
  }
  /// `count` Ts on the context's device, not initialised: for a buffer that is written whole
  /// before it is read (a zero fill is one more pass over its memory; on the GPU, MoE buffers of
  /// hundreds of MB per layer).
  void allocate(const troupe_exec_context* context, std::size_t count) {
    clear();
    if (count == 0) return;
    data_ = static_cast<T*>(allocate_bytes(context, count * sizeof(T)));
    allocator_ = context->allocator;
    device_ = context->device;
    count_ = count;
  }
  /// A copy of `count` Ts at `source` (on the context's device).
  void assign_copy(const troupe_exec_context* context, const T* source, std::size_t count) {
    allocate(context, count);
    if (count > 0) ops::copy_bytes(context, data_, source, bytes());
  }
  void clear() {
    if (data_ != nullptr) release_bytes(allocator_, device_, data_);
    data_ = nullptr;
    count_ = 0;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }
  bool empty() const { return count_ == 0; }

 private:
  const troupe_allocator* allocator_ = nullptr;
  DLDevice device_{kDLCPU, 0};
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

using buffer = device_array<float>;

/// RoPE's cos and sin tables [positions, dim/2] from inverse frequencies, grown on demand and
/// kept on each device they are asked for.
class rope_table {
 public:
  rope_table() = default;
  explicit rope_table(std::vector<float> inverse_frequencies);
  /// Tables covering positions [0, length) on the context's device: {cos, sin}.
  std::pair<const float*, const float*> on(const troupe_exec_context* context, std::int64_t length);

 private:
  std::vector<float> inverse_;
  std::int64_t length_ = 0;
  std::vector<float> cos_, sin_;
  struct device_copy {
    DLDevice device;
    std::int64_t length = 0;
    buffer cos, sin;
  };
  std::vector<device_copy> copies_;
};

/// A [batch, heads, rows, columns] operand of attention given by its strides (elements).
struct strided {
  const float* data = nullptr;
  std::int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
};
struct strided_out {
  float* data = nullptr;
  std::int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
};

/// Causal attention of kernels/cpu/attention.hpp over a batch of sequences and heads; a key's
/// last rope_dim columns come from `key_rope` (MLA's shared rope key: head stride 0).
struct attention_problem {
  std::int64_t batch = 0, heads = 0, length = 0, qk_dim = 0, rope_dim = 0, v_dim = 0;
  float scale = 1.0f;
};

namespace ops {

void zero(const troupe_exec_context* context, float* data, std::int64_t count,
          const char* function = TROUPE_OP_FUNCTION);
/// y += x.
void add(const troupe_exec_context* context, float* y, const float* x, std::int64_t count);
/// y = the sum over `slices` consecutive blocks of `count` floats, in order.
void sum_slices(const troupe_exec_context* context, const float* x, std::int64_t slices,
                std::int64_t count, float* y);
void copy_2d(const troupe_exec_context* context, float* dst, std::int64_t ld_dst, const float* src,
             std::int64_t ld_src, std::int64_t rows, std::int64_t cols);

/// RMSNorm over `dim` columns of rows `ldx` apart into rows `ldy` apart.
void rmsnorm_forward(const troupe_exec_context* context, const float* x, std::int64_t ldx,
                     const float* weight, float* y, std::int64_t ldy, float* rstd,
                     std::int64_t rows, std::int64_t dim, float eps);
/// dx (rows ldx apart) += ..., dweight += ... (may be null); dy rows ldy apart. On the host the
/// weight gradient sums the rows in order.
void rmsnorm_backward(const troupe_exec_context* context, const float* dy, std::int64_t ldy,
                      const float* x, std::int64_t ldx, const float* weight, const float* rstd,
                      float* dx, float* dweight, std::int64_t rows, std::int64_t dim);

/// kernels/cpu/rope.hpp's rope_rotate with the table's values for the context's device.
void rope_rotate(const troupe_exec_context* context, float* x, std::int64_t rows,
                 std::int64_t stride, std::int64_t dim, std::int64_t heads, std::int64_t length,
                 rope_table& table, int direction);

/// o and lse [batch, heads, length] from q, k (first qk_dim - rope_dim columns), key_rope, v.
void attention_forward(const troupe_exec_context* context, const attention_problem& problem,
                       strided q, strided k, strided key_rope, strided v, strided_out o,
                       float* lse);
/// dq, dk, d_key_rope (per head) and dv, overwritten. On the CPU dq must have q's strides, dv
/// v's and d_o o's (the host kernel's contract).
void attention_backward(const troupe_exec_context* context, const attention_problem& problem,
                        strided q, strided k, strided key_rope, strided v, strided o, strided d_o,
                        const float* lse, strided_out dq, strided_out dk, strided_out d_key_rope,
                        strided_out dv);

/// How a GEMM of f32 operands multiplies: exactly (FP32 FMA), or with the operands rounded to
/// BF16 on the tensor cores and FP32 accumulation. (The CPU always multiplies exactly.)
enum class gemm_math { exact, bf16 };

/// The math of the GEMMs a layer runs itself (the output head, grouped expert GEMMs) on this
/// context: bf16 on a GPU under the runtime's bf16 provider (model.precision = "bf16") or a GEMM
/// plugin's (fp8: the head stays in BF16, as DeepSeek-V3 keeps it), exact otherwise.
gemm_math context_math(const troupe_exec_context* context);

/// C = alpha op(A) op(B) + beta C on f32 operands, row-major with leading dimensions, in FP32
/// unless `math` says otherwise (the router's logits keep the default: DeepSeek-V3 keeps the
/// gate in high precision).
void gemm_f32(const troupe_exec_context* context, bool transpose_a, bool transpose_b,
              std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
              std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
              std::int64_t ldc, gemm_math math = gemm_math::exact);

/// C (f32) = alpha op(A) op(B) + beta C on BF16 operands (bits), row-major with leading
/// dimensions, FP32 accumulation: cuBLASLt's native BF16 kernels. GPU contexts only.
void gemm_bf16(const troupe_exec_context* context, bool transpose_a, bool transpose_b,
               std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const std::uint16_t* a,
               std::int64_t lda, const std::uint16_t* b, std::int64_t ldb, float beta, float* c,
               std::int64_t ldc);
/// The same with C written rounded to BF16 (bits; cuBLASLt's epilogue rounds the FP32
/// accumulators), never added to.
void gemm_bf16(const troupe_exec_context* context, bool transpose_a, bool transpose_b,
               std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const std::uint16_t* a,
               std::int64_t lda, const std::uint16_t* b, std::int64_t ldb, std::uint16_t* c,
               std::int64_t ldc);

// The router and the token permutation of kernels/cpu/router.hpp and expert_combine.hpp.
void router_forward(const troupe_exec_context* context, const kernels::cpu::router_shape& shape,
                    const float* logits, const float* bias, float* scores, std::int32_t* selected,
                    float* gates, std::int64_t tokens);
void router_backward(const troupe_exec_context* context, const kernels::cpu::router_shape& shape,
                     const float* scores, const std::int32_t* selected, const float* d_gates,
                     float* d_logits, std::int64_t tokens);
/// *loss (on the context's device) = the sequence-wise balance loss.
void balance_loss_forward(const troupe_exec_context* context,
                          const kernels::cpu::router_shape& shape, const float* scores,
                          const std::int32_t* selected, std::int64_t sequences, std::int64_t length,
                          double alpha, float* loss);
void balance_loss_backward(const troupe_exec_context* context,
                           const kernels::cpu::router_shape& shape, const float* scores,
                           const std::int32_t* selected, std::int64_t sequences,
                           std::int64_t length, double alpha, float d_loss, float* d_logits);
/// counts[e] = the (token, slot) pairs routed to e (overwritten).
void count_selections(const troupe_exec_context* context, const std::int32_t* selected,
                      std::int64_t pairs, std::int64_t experts, std::int64_t* counts);
/// order, position [T*K] and offsets [E+1]: the assignments grouped by expert.
void group_by_expert(const troupe_exec_context* context, const std::int32_t* selected,
                     std::int64_t tokens, std::int64_t topk, std::int64_t experts,
                     std::int64_t* order, std::int64_t* position, std::int64_t* offsets);
void gather_expert_rows(const troupe_exec_context* context, const float* x,
                        const std::int64_t* order, std::int64_t topk, std::int64_t width,
                        float* out, std::int64_t begin, std::int64_t end);
void combine_forward(const troupe_exec_context* context, const float* rows, const float* gates,
                     const std::int64_t* position, std::int64_t topk, std::int64_t width, float* y,
                     std::int64_t tokens);
/// `d_rows16` (GPU only) instead of d_rows (null): the row gradients rounded to BF16.
void combine_backward(const troupe_exec_context* context, const float* dy, const float* rows,
                      const float* gates, const std::int64_t* order, std::int64_t topk,
                      std::int64_t width, float* d_gates, float* d_rows, std::int64_t pairs,
                      std::uint16_t* d_rows16 = nullptr);
void scatter_add_rows(const troupe_exec_context* context, const float* d_rows,
                      const std::int64_t* position, std::int64_t topk, std::int64_t width,
                      float* dx, std::int64_t tokens);
/// The same three over rows held as BF16 bits (the experts' BF16 outputs; GPU only). Given
/// `position` (the row of each assignment, [pairs]), the backward into BF16 row gradients goes
/// token by token, reading each dy row once for its topk rows.
void combine_forward(const troupe_exec_context* context, const std::uint16_t* rows,
                     const float* gates, const std::int64_t* position, std::int64_t topk,
                     std::int64_t width, float* y, std::int64_t tokens);
void combine_backward(const troupe_exec_context* context, const float* dy,
                      const std::uint16_t* rows, const float* gates, const std::int64_t* order,
                      std::int64_t topk, std::int64_t width, float* d_gates, float* d_rows,
                      std::int64_t pairs, std::uint16_t* d_rows16 = nullptr,
                      const std::int64_t* position = nullptr);
void scatter_add_rows(const troupe_exec_context* context, const std::uint16_t* d_rows,
                      const std::int64_t* position, std::int64_t topk, std::int64_t width,
                      float* dx, std::int64_t tokens);
/// Rows grouped by expert on the device (offsets [groups + 1]); row r of Fprop and Wgrad reads
/// input row source[r] / divisor (source null: r).
struct grouped_rows {
  const std::int64_t* offsets = nullptr;
  std::int64_t groups = 0, rows = 0;
  const std::int64_t* source = nullptr;
  std::int64_t divisor = 1;
};

/// Whether the routed experts' GEMMs run grouped (one launch per pass, kernels/cuda/
/// grouped_gemm.hpp): on every GPU context, in its math (FP32, or BF16 under the runtime's bf16
/// provider and under a GEMM plugin: fp8 has no grouped kernel yet). The host runs one GEMM per
/// expert through the provider.
bool grouped_expert_gemms(const troupe_exec_context* context);
/// Per-expert weights as device arrays of pointers: one table of [n, k] matrices, or two of
/// [n/2, k] stacked into one [n, k] (gate above up: both projections in one GEMM). `rounded`:
/// their BF16 copy from round_expert_weights, current, or null (the BF16 math rounds the tables
/// per call then).
struct expert_weights {
  const float* const* first = nullptr;
  const float* const* second = nullptr;
  const void* rounded = nullptr;
};
/// Bytes of the BF16 copy of `groups` experts' [n, k] weights (GPU only).
std::size_t rounded_expert_weights_bytes(std::int64_t groups, std::int64_t n, std::int64_t k);
/// Rounds the weights to BF16 into `out` (the bytes above, on the context's GPU): what Fprop and
/// Dgrad read.
void round_expert_weights(const troupe_exec_context* context, expert_weights weights,
                          std::int64_t groups, std::int64_t n, std::int64_t k, void* out);
/// Their gradients, in the same arrangement.
struct expert_gradients {
  float* const* first = nullptr;
  float* const* second = nullptr;
};
/// y[r] (+)= x[src(r)] W_g^T, dx[r] (+)= dy[r] W_g, dW_g += dy_g^T x_g (GPU only), in the
/// context's math; the BF16 math stages rounded operands in memory from the context's allocator.
/// Under the BF16 math (grouped_bf16_operands) an activation may come already rounded to BF16 by
/// its producer (`x_bf16`, `dy_bf16`: bits, rows in order, with the f32 operand's leading
/// dimension; kernels/cuda/grouped_gemm.hpp says what it must meet): then it is read as it is.
/// Fprop and Dgrad may write their output rounded to BF16 instead (`y_bf16`, `dx_bf16`, with the
/// f32 output's leading dimension; not accumulating; the f32 output may then be null).
void grouped_fprop(const troupe_exec_context* context, const grouped_rows& rows, const float* x,
                   std::int64_t ldx, expert_weights weights, std::int64_t n, std::int64_t k,
                   float* y, std::int64_t ldy, bool accumulate,
                   const std::uint16_t* x_bf16 = nullptr, std::uint16_t* y_bf16 = nullptr);
void grouped_dgrad(const troupe_exec_context* context, const grouped_rows& rows, const float* dy,
                   std::int64_t lddy, expert_weights weights, std::int64_t n, std::int64_t k,
                   float* dx, std::int64_t lddx, bool accumulate,
                   const std::uint16_t* dy_bf16 = nullptr, std::uint16_t* dx_bf16 = nullptr);
/// What the experts' weight gradients hold when a Wgrad starts.
enum class gradients_hold {
  sums,      ///< what earlier backwards added: add to them
  zeros,     ///< zeros (the runtime zeroed them): tiles with a single writer store
  anything,  ///< whatever they held (TROUPE_PARAM_GRAD_OVERWRITTEN): the products replace it
};
/// `squares` (device memory for one double per gradient matrix, or null): where the pass stores
/// the gradients whole on CUTLASS's kernel it also writes their sums of squares there
/// (squares[g * tables + table]); returns whether it did (kernels/cuda/grouped_gemm.hpp).
bool grouped_wgrad(const troupe_exec_context* context, const grouped_rows& rows, const float* dy,
                   std::int64_t lddy, const float* x, std::int64_t ldx, expert_gradients grads,
                   std::int64_t n, std::int64_t k, gradients_hold held = gradients_hold::sums,
                   const std::uint16_t* dy_bf16 = nullptr, const std::uint16_t* x_bf16 = nullptr,
                   double* squares = nullptr);
/// Whether the grouped GEMMs run in the BF16 math on this context, so their activations may come
/// pre-rounded (swiglu_*_bf16, round_to_bf16).
bool grouped_bf16_operands(const troupe_exec_context* context);
/// out[r] = BF16 bits of the input row rows.source(r) (kernels/cuda/grouped_gemm.hpp's
/// gather_rows_bf16; GPU only): the gathered input rounded once for Fprop and Wgrad.
void gather_rows_bf16(const troupe_exec_context* context, const grouped_rows& rows, const float* x,
                      std::int64_t ldx, std::int64_t k, std::uint16_t* out);
/// out[i] = BF16 bits of x[i], round to nearest even (GPU only).
void round_to_bf16(const troupe_exec_context* context, const float* x, std::uint16_t* out,
                   std::int64_t count);

/// SwiGLU over a fused [rows, 2*width] gate|up buffer (kernels/cpu/swiglu.hpp).
void swiglu_forward_fused(const troupe_exec_context* context, const float* gate_up, float* h,
                          std::int64_t rows, std::int64_t width);
/// dgate_up += the gradient; with `accumulate` false, = (its old contents are never read).
void swiglu_backward_fused(const troupe_exec_context* context, const float* dh,
                           const float* gate_up, float* dgate_up, std::int64_t rows,
                           std::int64_t width, bool accumulate = true);
/// The same two with their results rounded to BF16 (bits) for the grouped GEMMs (GPU only; the
/// width a multiple of 4; dgate_up written, not added to).
void swiglu_forward_fused_bf16(const troupe_exec_context* context, const float* gate_up,
                               std::uint16_t* h, std::int64_t rows, std::int64_t width);
void swiglu_backward_fused_bf16(const troupe_exec_context* context, const float* dh,
                                const float* gate_up, std::uint16_t* dgate_up, std::int64_t rows,
                                std::int64_t width);
/// The same two from BF16 inputs (gate_up and dh as the grouped GEMMs' BF16 outputs write them).
void swiglu_forward_fused_bf16(const troupe_exec_context* context, const std::uint16_t* gate_up,
                               std::uint16_t* h, std::int64_t rows, std::int64_t width);
void swiglu_backward_fused_bf16(const troupe_exec_context* context, const std::uint16_t* dh,
                                const std::uint16_t* gate_up, std::uint16_t* dgate_up,
                                std::int64_t rows, std::int64_t width);

}  // namespace ops

}  // namespace troupe::kernels
