#include "kernels/dispatch/device_ops.hpp"
#include "kernels/dispatch/op_timing.hpp"
#include "kernels/dispatch/require_cuda.hpp"

#include <algorithm>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/rmsnorm.hpp"
#include "kernels/cpu/rope.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/attention.hpp"
#include "kernels/cuda/attention_cudnn.hpp"
#include "kernels/cuda/elementwise.hpp"
#include "kernels/cuda/rmsnorm.hpp"
#include "kernels/cuda/rope.hpp"
#endif

namespace troupe::kernels {

namespace detail {

void require_cuda() {
#if !TROUPE_HAVE_CUDA
  throw std::runtime_error("this build of troupe has no CUDA and cannot compute on a GPU");
#endif
}

}  // namespace detail

namespace {

using detail::require_cuda;

#if TROUPE_HAVE_CUDA
void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorString(status));
}
#endif

void copy_to_device(const troupe_exec_context* context, float* dst, const float* src,
                    std::size_t count) {
  require_cuda();
#if TROUPE_HAVE_CUDA
  check(cudaMemcpyAsync(dst, src, count * sizeof(float), cudaMemcpyHostToDevice,
                        static_cast<cudaStream_t>(context->stream)),
        "cudaMemcpyAsync (host to device)");
  // NOTES: the host source is pageable and may be freed or reused after we return; a pageable
  // copy is staged before the call returns, but waiting keeps that independent of the driver.
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(context->stream)), "cudaStreamSynchronize");
#else
  (void)context, (void)dst, (void)src, (void)count;
#endif
}

bool same_device(DLDevice a, DLDevice b) {
  return a.device_type == b.device_type && a.device_id == b.device_id;
}

}  // namespace

bool on_gpu(const troupe_exec_context* context) {
  return context->device.device_type == kDLCUDA;
}

troupe_exec_context serial_context(const troupe_exec_context* context) {
  static const troupe_thread_pool inline_pool{
      nullptr, 1, [](void*, std::int64_t count, std::int64_t, troupe_range_fn fn, void* arg) {
        if (count > 0) fn(arg, 0, count);
      }};
  troupe_exec_context serial{};  // a context of an older ABI is smaller: the rest stays zero
  const std::size_t size = std::min<std::size_t>(context->struct_size, sizeof serial);
  std::memcpy(&serial, context, size);
  serial.struct_size = static_cast<std::uint32_t>(size);  // what this copy holds, no more
  serial.pool = &inline_pool;
  return serial;
}

// ---- memory -------------------------------------------------------------------------------------

void* allocate_bytes(const troupe_exec_context* context, std::size_t bytes) {
  if (on_gpu(context)) require_cuda();
  void* data = context->allocator->allocate(context->allocator->self, context->device, bytes);
  if (data == nullptr) throw std::bad_alloc();
  return data;
}

void release_bytes(const troupe_allocator* allocator, DLDevice device, void* pointer) {
  allocator->release(allocator->self, device, pointer);
}

// ---- rope_table ---------------------------------------------------------------------------------

rope_table::rope_table(std::vector<float> inverse_frequencies)
    : inverse_(std::move(inverse_frequencies)) {}

std::pair<const float*, const float*> rope_table::on(const troupe_exec_context* context,
                                                     std::int64_t length) {
  if (length > length_) {
    // NOTES: grown by doubling, so decoding (one position more per call) recomputes the tables
    // O(log n) times, not once per token.
    length = std::max(length, 2 * length_);
    const std::size_t half = inverse_.size();
    cos_.resize(static_cast<std::size_t>(length) * half);
    sin_.resize(static_cast<std::size_t>(length) * half);
    cpu::rope_tables(inverse_, length, cos_.data(), sin_.data());
    length_ = length;
  }
  if (!on_gpu(context)) return {cos_.data(), sin_.data()};
  auto it = std::find_if(copies_.begin(), copies_.end(), [&](const device_copy& c) {
    return same_device(c.device, context->device);
  });
  if (it == copies_.end()) {
    copies_.push_back({context->device, 0, {}, {}});
    it = copies_.end() - 1;
  }
  if (it->length < length_) {
    it->cos.assign(context, cos_.size());
    it->sin.assign(context, sin_.size());
    copy_to_device(context, it->cos.data(), cos_.data(), cos_.size());
    copy_to_device(context, it->sin.data(), sin_.data(), sin_.size());
    it->length = length_;
  }
  return {it->cos.data(), it->sin.data()};
}

// ---- ops ----------------------------------------------------------------------------------------

namespace ops {

namespace {

// NOTES: a large fill, copy or add runs on the caller's thread while the pool's workers wait, so
// above 1 MiB it goes over the pool in pieces of 256 KiB (the memory bus of two cores carries
// more than one core's stream).
constexpr std::size_t parallel_bytes = std::size_t{1} << 20, piece_bytes = std::size_t{256} << 10;

template <class F>
void over_pieces(const troupe_exec_context* context, std::size_t bytes, std::size_t element,
                 F&& body) {
  const std::size_t count = bytes / element, piece = piece_bytes / element;
  if (bytes < parallel_bytes || context->pool == nullptr || context->pool->num_threads <= 1) {
    body(std::size_t{0}, count);
    return;
  }
  const auto pieces = static_cast<std::int64_t>((count + piece - 1) / piece);
  parallel_for(context, pieces, 1, [&](std::int64_t begin, std::int64_t end) {
    body(static_cast<std::size_t>(begin) * piece,
         std::min(count, static_cast<std::size_t>(end) * piece));
  });
}

}  // namespace

void zero_bytes(const troupe_exec_context* context, void* data, std::size_t bytes,
                const char* function) {
  const op_scope timing(context, op_class::elementwise, function);
  if (bytes == 0) return;
  if (!on_gpu(context)) {
    over_pieces(context, bytes, 1, [&](std::size_t begin, std::size_t end) {
      std::memset(static_cast<char*>(data) + begin, 0, end - begin);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  check(cudaMemsetAsync(data, 0, bytes, static_cast<cudaStream_t>(context->stream)),
        "cudaMemsetAsync");
#endif
}

void zero(const troupe_exec_context* context, float* data, std::int64_t count,
          const char* function) {
  zero_bytes(context, data, static_cast<std::size_t>(count) * sizeof(float), function);
}

void copy_bytes(const troupe_exec_context* context, void* dst, const void* src, std::size_t bytes) {
  const op_scope timing(context, op_class::elementwise);
  if (bytes == 0) return;
  if (!on_gpu(context)) {
    over_pieces(context, bytes, 1, [&](std::size_t begin, std::size_t end) {
      std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin,
                  end - begin);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                        static_cast<cudaStream_t>(context->stream)),
        "cudaMemcpyAsync (device to device)");
#endif
}

namespace {

/// A copy between host memory and the context's device, waited for.
void copy_with_host(const troupe_exec_context* context, void* dst, const void* src,
                    std::size_t bytes, bool to_device) {
  const op_scope timing(context, op_class::host_copies);
  if (bytes == 0) return;
  if (!on_gpu(context)) {
    over_pieces(context, bytes, 1, [&](std::size_t begin, std::size_t end) {
      std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin,
                  end - begin);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  check(
      cudaMemcpyAsync(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost,
                      static_cast<cudaStream_t>(context->stream)),
      to_device ? "cudaMemcpyAsync (host to device)" : "cudaMemcpyAsync (device to host)");
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(context->stream)), "cudaStreamSynchronize");
#else
  (void)to_device;
#endif
}

}  // namespace

void copy_from_host(const troupe_exec_context* context, void* dst, const void* src,
                    std::size_t bytes) {
  copy_with_host(context, dst, src, bytes, true);
}

void copy_to_host(const troupe_exec_context* context, void* dst, const void* src,
                  std::size_t bytes) {
  copy_with_host(context, dst, src, bytes, false);
}

void add(const troupe_exec_context* context, float* y, const float* x, std::int64_t count) {
  const op_scope timing(context, op_class::elementwise);
  if (count <= 0) return;
  if (!on_gpu(context)) {
    over_pieces(context, static_cast<std::size_t>(count) * sizeof(float), sizeof(float),
                [&](std::size_t begin, std::size_t end) {
                  for (std::size_t i = begin; i < end; ++i) y[i] += x[i];
                });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::add(y, x, count, context->stream);
#endif
}

void sum_slices(const troupe_exec_context* context, const float* x, std::int64_t slices,
                std::int64_t count, float* y) {
  const op_scope timing(context, op_class::elementwise);
  if (!on_gpu(context)) {
    std::fill(y, y + count, 0.0f);
    for (std::int64_t s = 0; s < slices; ++s)
      for (std::int64_t i = 0; i < count; ++i) y[i] += x[s * count + i];
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::sum_slices(x, slices, count, y, context->stream);
#endif
}

void copy_2d(const troupe_exec_context* context, float* dst, std::int64_t ld_dst, const float* src,
             std::int64_t ld_src, std::int64_t rows, std::int64_t cols) {
  const op_scope timing(context, op_class::elementwise);
  if (!on_gpu(context)) {
    for (std::int64_t r = 0; r < rows; ++r)
      std::memcpy(dst + r * ld_dst, src + r * ld_src,
                  static_cast<std::size_t>(cols) * sizeof(float));
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::copy_2d(dst, ld_dst, src, ld_src, rows, cols, context->stream);
#endif
}

void rmsnorm_forward(const troupe_exec_context* context, const float* x, std::int64_t ldx,
                     const float* weight, float* y, std::int64_t ldy, float* rstd,
                     std::int64_t rows, std::int64_t dim, float eps) {
  const op_scope timing(context, op_class::elementwise);
  if (!on_gpu(context)) {
    parallel_for(context, rows, 16, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t row = begin; row < end; ++row)
        cpu::rmsnorm_forward(x + row * ldx, weight, y + row * ldy,
                             rstd != nullptr ? rstd + row : nullptr, 1, dim, eps);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::rmsnorm_forward(x, ldx, weight, y, ldy, rstd, rows, dim, eps, context->stream);
#endif
}

void rmsnorm_backward(const troupe_exec_context* context, const float* dy, std::int64_t ldy,
                      const float* x, std::int64_t ldx, const float* weight, const float* rstd,
                      float* dx, float* dweight, std::int64_t rows, std::int64_t dim) {
  const op_scope timing(context, op_class::elementwise);
  if (!on_gpu(context)) {
    // Row by row in order: the weight gradient sums the rows sequentially.
    for (std::int64_t row = 0; row < rows; ++row)
      cpu::rmsnorm_backward(dy + row * ldy, x + row * ldx, weight, rstd + row, dx + row * ldx,
                            dweight, 1, dim);
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  buffer scratch;
  if (dweight != nullptr)
    scratch.allocate(context,  // every partial is written before it is summed
                     static_cast<std::size_t>(cuda::rmsnorm_backward_scratch(rows, dim)));
  cuda::rmsnorm_backward(dy, ldy, x, ldx, weight, rstd, dx, dweight, rows, dim, scratch.data(),
                         context->stream);
#endif
}

void rope_rotate(const troupe_exec_context* context, float* x, std::int64_t rows,
                 std::int64_t stride, std::int64_t dim, std::int64_t heads, std::int64_t length,
                 rope_table& table, int direction) {
  const op_scope timing(context, op_class::elementwise);
  const auto [cos_table, sin_table] = table.on(context, length);
  if (!on_gpu(context)) {
    // One sequence per task (positions restart in each); rows not whole sequences in one call.
    const std::int64_t per_sequence = heads * length;
    if (per_sequence <= 0 || rows % per_sequence != 0) {
      cpu::rope_rotate(x, rows, stride, dim, heads, length, cos_table, sin_table, direction);
      return;
    }
    // NOTES: the tables by name, not the structured bindings: clang 14 (the fuzzing build)
    // cannot capture those.
    const float *cosines = cos_table, *sines = sin_table;
    parallel_for(context, rows / per_sequence, 1, [&](std::int64_t begin, std::int64_t end) {
      cpu::rope_rotate(x + begin * per_sequence * stride, (end - begin) * per_sequence, stride, dim,
                       heads, length, cosines, sines, direction);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::rope_rotate(x, rows, stride, dim, heads, length, cos_table, sin_table, direction,
                    context->stream);
#endif
}

namespace {

const float* at(const strided& x, std::int64_t b, std::int64_t h) {
  return x.data + b * x.batch_stride + h * x.head_stride;
}
float* at(const strided_out& x, std::int64_t b, std::int64_t h) {
  return x.data + b * x.batch_stride + h * x.head_stride;
}

/// Keys [length, qk_dim] of (b, h) assembled from k and the rope key.
void assemble_keys(const attention_problem& p, const strided& k, const strided& rope,
                   std::int64_t b, std::int64_t h, float* keys) {
  const std::int64_t nope = p.qk_dim - p.rope_dim;
  for (std::int64_t i = 0; i < p.length; ++i) {
    std::memcpy(keys + i * p.qk_dim, at(k, b, h) + i * k.row_stride,
                static_cast<std::size_t>(nope) * sizeof(float));
    if (p.rope_dim > 0)
      std::memcpy(keys + i * p.qk_dim + nope, at(rope, b, h) + i * rope.row_stride,
                  static_cast<std::size_t>(p.rope_dim) * sizeof(float));
  }
}

#if TROUPE_HAVE_CUDA
cuda::attention_operand to_cuda(const strided& x) {
  return {x.data, x.batch_stride, x.head_stride, x.row_stride};
}
cuda::attention_result to_cuda(const strided_out& x) {
  return {x.data, x.batch_stride, x.head_stride, x.row_stride};
}
cuda::attention_problem to_cuda(const attention_problem& p) {
  return {p.batch, p.heads, p.length, p.qk_dim, p.rope_dim, p.v_dim, p.scale};
}
#endif

}  // namespace

void attention_forward(const troupe_exec_context* context, const attention_problem& p, strided q,
                       strided k, strided key_rope, strided v, strided_out o, float* lse) {
  const op_scope timing(context, op_class::attention);
  if (!on_gpu(context)) {
    parallel_for(context, p.batch * p.heads, 1, [&](std::int64_t begin, std::int64_t end) {
      std::vector<float> keys(static_cast<std::size_t>(p.length * p.qk_dim));
      std::vector<float> scratch(
          static_cast<std::size_t>(cpu::attention_forward_scratch(p.length)));
      for (std::int64_t task = begin; task < end; ++task) {
        const std::int64_t b = task / p.heads, h = task % p.heads;
        assemble_keys(p, k, key_rope, b, h, keys.data());
        const cpu::attention_shape shape{p.length, p.qk_dim,     p.v_dim,      q.row_stride,
                                         p.qk_dim, v.row_stride, o.row_stride, p.scale};
        cpu::causal_attention_forward(shape, at(q, b, h), keys.data(), at(v, b, h), at(o, b, h),
                                      lse + task * p.length, scratch.data());
      }
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  if (context_math(context) == gemm_math::bf16 &&
      cuda::attention_cudnn_supported(to_cuda(p), false)) {
    device_array<std::uint16_t> staging;
    staging.allocate(context, (cuda::attention_cudnn_staging_bytes(to_cuda(p), false) + 1) / 2);
    cuda::attention_forward_cudnn(to_cuda(p), to_cuda(q), to_cuda(k), to_cuda(key_rope), to_cuda(v),
                                  to_cuda(o), lse, context->stream, staging.data());
    return;
  }
  if (context_math(context) == gemm_math::bf16) {
    device_array<std::uint16_t> staging;
    staging.allocate(context, cuda::attention_bf16_staging_bytes(to_cuda(p), false) / 2);
    cuda::attention_forward_bf16(to_cuda(p), to_cuda(q), to_cuda(k), to_cuda(key_rope), to_cuda(v),
                                 to_cuda(o), lse, context->stream, staging.data());
    return;
  }
  cuda::attention_forward(to_cuda(p), to_cuda(q), to_cuda(k), to_cuda(key_rope), to_cuda(v),
                          to_cuda(o), lse, context->stream);
#endif
}

void attention_backward(const troupe_exec_context* context, const attention_problem& p, strided q,
                        strided k, strided key_rope, strided v, strided o, strided d_o,
                        const float* lse, strided_out dq, strided_out dk, strided_out d_key_rope,
                        strided_out dv) {
  const op_scope timing(context, op_class::attention);
  if (!on_gpu(context)) {
    if (dq.row_stride != q.row_stride || dv.row_stride != v.row_stride ||
        d_o.row_stride != o.row_stride)
      throw std::runtime_error(
          "attention_backward on the CPU: dq, dv and dO must have the strides of q, v and O");
    const std::int64_t nope = p.qk_dim - p.rope_dim;
    parallel_for(context, p.batch * p.heads, 1, [&](std::int64_t begin, std::int64_t end) {
      std::vector<float> keys(static_cast<std::size_t>(p.length * p.qk_dim));
      std::vector<float> d_keys(keys.size());
      std::vector<float> scratch(
          static_cast<std::size_t>(cpu::attention_backward_scratch(p.length)));
      for (std::int64_t task = begin; task < end; ++task) {
        const std::int64_t b = task / p.heads, h = task % p.heads;
        assemble_keys(p, k, key_rope, b, h, keys.data());
        const cpu::attention_shape shape{p.length, p.qk_dim,     p.v_dim,      q.row_stride,
                                         p.qk_dim, v.row_stride, o.row_stride, p.scale};
        cpu::causal_attention_backward(shape, at(q, b, h), keys.data(), at(v, b, h), at(o, b, h),
                                       at(d_o, b, h), lse + task * p.length, at(dq, b, h),
                                       d_keys.data(), at(dv, b, h), scratch.data());
        for (std::int64_t i = 0; i < p.length; ++i) {
          std::memcpy(at(dk, b, h) + i * dk.row_stride, d_keys.data() + i * p.qk_dim,
                      static_cast<std::size_t>(nope) * sizeof(float));
          if (p.rope_dim > 0)
            std::memcpy(at(d_key_rope, b, h) + i * d_key_rope.row_stride,
                        d_keys.data() + i * p.qk_dim + nope,
                        static_cast<std::size_t>(p.rope_dim) * sizeof(float));
        }
      }
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  if (context_math(context) == gemm_math::bf16 &&
      cuda::attention_cudnn_supported(to_cuda(p), true)) {
    device_array<std::uint16_t> staging;
    staging.allocate(context, (cuda::attention_cudnn_staging_bytes(to_cuda(p), true) + 1) / 2);
    cuda::attention_backward_cudnn(to_cuda(p), to_cuda(q), to_cuda(k), to_cuda(key_rope),
                                   to_cuda(v), to_cuda(o), to_cuda(d_o), lse, to_cuda(dq),
                                   to_cuda(dk), to_cuda(d_key_rope), to_cuda(dv), context->stream,
                                   staging.data());
    return;
  }
  buffer scratch;
  scratch.allocate(context,  // delta, one per query row, written whole first
                   static_cast<std::size_t>(cuda::attention_backward_scratch(to_cuda(p))));
  if (context_math(context) == gemm_math::bf16) {
    device_array<std::uint16_t> staging;
    staging.allocate(context, cuda::attention_bf16_staging_bytes(to_cuda(p), true) / 2);
    cuda::attention_backward_bf16(to_cuda(p), to_cuda(q), to_cuda(k), to_cuda(key_rope), to_cuda(v),
                                  to_cuda(o), to_cuda(d_o), lse, to_cuda(dq), to_cuda(dk),
                                  to_cuda(d_key_rope), to_cuda(dv), scratch.data(), context->stream,
                                  staging.data());
    return;
  }
  cuda::attention_backward(to_cuda(p), to_cuda(q), to_cuda(k), to_cuda(key_rope), to_cuda(v),
                           to_cuda(o), to_cuda(d_o), lse, to_cuda(dq), to_cuda(dk),
                           to_cuda(d_key_rope), to_cuda(dv), scratch.data(), context->stream);
#endif
}

}  // namespace ops

}  // namespace troupe::kernels
