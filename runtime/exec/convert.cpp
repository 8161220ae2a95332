#include "runtime/exec/convert.hpp"

#include "kernels/cpu/convert.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"
#include "troupe_build_config.h"
#if TROUPE_HAVE_CUDA
#include "kernels/cuda/convert.hpp"
#endif

namespace troupe {

namespace {

[[noreturn]] void unsupported(const tensor& source, dtype to) {
  fail("converting {} to {} is not supported on {}", source.describe(), name_of(to),
       to_string(source.where()));
}

void from_f32_cpu(const tensor& source, tensor& out) {
  const float* in = source.data_as<const float>();
  const std::int64_t n = source.numel();
  switch (out.type()) {
    case dtype::bf16:
      kernels::cpu::f32_to_bf16(in, out.data_as<std::uint16_t>(), n);
      return;
    case dtype::f16:
      kernels::cpu::f32_to_f16(in, out.data_as<std::uint16_t>(), n);
      return;
    case dtype::f8_e4m3:
      kernels::cpu::f32_to_e4m3(in, out.data_as<std::uint8_t>(), n);
      return;
    default:
      unsupported(source, out.type());
  }
}

void to_f32_cpu(const tensor& source, tensor& out) {
  float* o = out.data_as<float>();
  const std::int64_t n = source.numel();
  switch (source.type()) {
    case dtype::bf16:
      kernels::cpu::bf16_to_f32(source.data_as<const std::uint16_t>(), o, n);
      return;
    case dtype::f16:
      kernels::cpu::f16_to_f32(source.data_as<const std::uint16_t>(), o, n);
      return;
    case dtype::f8_e4m3:
      kernels::cpu::e4m3_to_f32(source.data_as<const std::uint8_t>(), o, n);
      return;
    default:
      unsupported(source, dtype::f32);
  }
}

#if TROUPE_HAVE_CUDA
// NOTES: on the thread's current stream (the actor's, under its stream_guard), which is also the
// one `out` was allocated on; waiting for that stream alone leaves other streams running.
void from_f32_cuda(const tensor& source, tensor& out) {
  const int ordinal = source.where().index;
  void* stream = cuda::current_stream(ordinal);
  const float* in = source.data_as<const float>();
  const std::int64_t n = source.numel();
  switch (out.type()) {
    case dtype::bf16:
      kernels::cuda::f32_to_bf16(in, out.data_as<std::uint16_t>(), n, stream);
      break;
    case dtype::f8_e4m3:
      kernels::cuda::f32_to_e4m3(in, out.data_as<std::uint8_t>(), n, stream);
      break;
    default:
      unsupported(source, out.type());
  }
  cuda::synchronize_stream(stream, ordinal);
}

void to_f32_cuda(const tensor& source, tensor& out) {
  const int ordinal = source.where().index;
  void* stream = cuda::current_stream(ordinal);
  float* o = out.data_as<float>();
  const std::int64_t n = source.numel();
  switch (source.type()) {
    case dtype::bf16:
      kernels::cuda::bf16_to_f32(source.data_as<const std::uint16_t>(), o, n, stream);
      break;
    case dtype::f8_e4m3:
      kernels::cuda::e4m3_to_f32(source.data_as<const std::uint8_t>(), o, n, stream);
      break;
    default:
      unsupported(source, dtype::f32);
  }
  cuda::synchronize_stream(stream, ordinal);
}
#endif

}  // namespace

tensor convert(const tensor& source, dtype to) {
  TROUPE_CHECK(source.defined(), "cannot convert an undefined tensor");
  const tensor input = source.is_contiguous() ? source : source.clone();
  if (input.type() == to) return input.clone();
  if (input.type() != dtype::f32 && to != dtype::f32)
    return convert(convert(input, dtype::f32), to);
  tensor out = tensor::empty(to, input.shape(), input.where());
  const bool from_f32 = input.type() == dtype::f32;
  if (input.where().is_cpu()) {
    from_f32 ? from_f32_cpu(input, out) : to_f32_cpu(input, out);
    return out;
  }
#if TROUPE_HAVE_CUDA
  cuda::use_device(input.where().index);
  from_f32 ? from_f32_cuda(input, out) : to_f32_cuda(input, out);
  return out;
#else
  unsupported(input, to);
#endif
}

}  // namespace troupe
