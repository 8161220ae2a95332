#pragma once

// The ops a layer plugin runs, on whichever device its exec context names: the host's kernels
// (kernels/cpu, on the worker pool) or CUDA's (kernels/cuda, on the context's stream). A layer
// written against these, its buffers included, runs on both; its GEMMs go through the context's
// provider (kernels/cpu/linear.hpp), which follows the device too. Failures throw
// std::runtime_error (plugins turn them into error statuses with guarded()). A build without
// CUDA refuses a GPU context with a message that says so.

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "runtime/abi/troupe_plugin.h"

namespace troupe::plugin {

/// Whether `context` computes on a CUDA device.
bool on_gpu(const troupe_exec_context* context);

/// Floats on the context's device (host memory on the CPU), from the context's allocator (on a
/// GPU: the stream-ordered pool). Zero-filled when assigned; freed with the buffer.
class buffer {
 public:
  buffer() = default;
  ~buffer() { clear(); }
  buffer(buffer&& other) noexcept { *this = std::move(other); }
  buffer& operator=(buffer&& other) noexcept;
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;

  /// `count` zeros on the context's device (the old contents are dropped).
  void assign(const troupe_exec_context* context, std::size_t count);
  /// A copy of `count` floats at `source` (on the context's device).
  void assign_copy(const troupe_exec_context* context, const float* source, std::size_t count);
  void clear();

  float* data() { return data_; }
  const float* data() const { return data_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(float); }
  bool empty() const { return count_ == 0; }

 private:
  const troupe_allocator* allocator_ = nullptr;
  DLDevice device_{kDLCPU, 0};
  float* data_ = nullptr;
  std::size_t count_ = 0;
};

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

void zero(const troupe_exec_context* context, float* data, std::int64_t count);
/// y += x.
void add(const troupe_exec_context* context, float* y, const float* x, std::int64_t count);
/// y = the sum over `slices` consecutive blocks of `count` floats, in order.
void sum_slices(const troupe_exec_context* context, const float* x, std::int64_t slices,
                std::int64_t count, float* y);
void copy_2d(const troupe_exec_context* context, float* dst, std::int64_t ld_dst, const float* src,
             std::int64_t ld_src, std::int64_t rows, std::int64_t cols);

/// RMSNorm over the first `dim` columns of rows `ldx` apart; y contiguous [rows, dim].
void rmsnorm_forward(const troupe_exec_context* context, const float* x, std::int64_t ldx,
                     const float* weight, float* y, float* rstd, std::int64_t rows,
                     std::int64_t dim, float eps);
/// dx (rows ldx apart) += ..., dweight += ... (may be null); dy contiguous.
void rmsnorm_backward(const troupe_exec_context* context, const float* dy, const float* x,
                      std::int64_t ldx, const float* weight, const float* rstd, float* dx,
                      float* dweight, std::int64_t rows, std::int64_t dim);

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

}  // namespace ops

}  // namespace troupe::plugin
