// The BF16 grouped GEMMs on CUTLASS's Hopper grouped kernel (TMA, warp-specialised persistent
// blocks, per-group TMA descriptors made on the device), from the operands that
// grouped_staging.cuh rounds: built for sm_90a when CUTLASS's headers are found (meson option
// `cutlass`, or the pip package nvidia-cutlass of tools/requirements.txt).

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>

// NOTES: CUTLASS's headers, in the order its own Hopper examples include them.
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "kernels/cuda/grouped_gemm.cuh"
#include "kernels/cuda/grouped_staging.cuh"

namespace troupe::kernels::cuda::grouped {

namespace {

// NOTES: every pass is one CUTLASS grouped GEMM D_g = A_g B_g (+ C_g) over the staged BF16
// operands, with a problem per expert (per expert and table for Wgrad's stacked gradients) whose
// shape, pointers and strides a small kernel writes from the offsets on the device, so the host
// never learns the routing:
//   Fprop  M = rows_g, N = n, K = k     A = x rows [R, kp] (row-major)   B = W_g [n, kp] (K-major)
//   Dgrad  M = rows_g, N = k, K = n     A = dy [R, np] (row-major)       B = W_g [n, kp] (N-major)
//   Wgrad  M = n (or n/2), N = k, K = rows_g
//                                       A = dy^T (M-major, ld np)        B = x rows (N-major)
// TMA fills what lies outside a group's extents with zeros, so an expert's last rows need no
// masking, and each output tile has one writer: Wgrad stores (onto zeros) or adds (beta 1) without
// atomics, and the sum is the same from run to run. An expert without rows gets M = 0 (no tiles).
// Fprop and Dgrad: tiles of 128 x 256 x 64, two consumer warpgroups (CUTLASS's cooperative
// schedule); Wgrad: 128 x 128 tiles, one per consumer warpgroup (ping-pong, below). A producer warp
// streams the slabs with TMA into as many stages as shared memory holds; the epilogue stores
// through shared memory with TMA, BF16 activations (Fprop, Dgrad) or FP32 gradients (Wgrad). The
// per-group descriptors live in the workspace.
using namespace cute;
using element = cutlass::bfloat16_t;
using problem_shape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;
using row_major = cutlass::layout::RowMajor;
using column_major = cutlass::layout::ColumnMajor;

// NOTES: by `troupe bench experts` on the H200 (medium config, 8192 tokens; one layer's six
// passes): this tiling 6.17 ms; the same in clusters of two along M (B multicast) 6.44; CUTLASS's
// ping-pong schedule on 128 x 128 tiles 6.67, in pairs 6.81 (all six passes on one schedule,
// FP32 outputs). Fprop and Dgrad stay on this one (PyTorch's grouped_mm takes it too for shapes
// this large); Wgrad may take the ping-pong schedule (below).
struct cooperative {
  using tile = Shape<_128, _256, _64>;
  using cluster = Shape<_1, _1, _1>;
  using kernel_schedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
  using epilogue_schedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
};

// NOTES: Wgrad's reduction is an expert's rows (768 on average for the medium config), so a
// 128 x 256 tile multiplies for 12 slabs and then stores 128 KiB of FP32 gradient, during which
// the cooperative schedule's tensor cores wait. The ping-pong schedule gives each of its two
// consumer warpgroups a tile of its own, so one stores while the other multiplies. By `troupe
// bench experts` on the H200 (medium config, one call with both): gate+up Wgrad onto zeros 1.142
// ms against the cooperative 1.179, down 0.601 against 0.640; adding, 1.390 against 1.449 and
// 0.730 against 0.787. Only the ping-pong Wgrad is built (each instantiation adds about 40 s to
// the build).
struct pingpong {
  using tile = Shape<_128, _128, _64>;
  using cluster = Shape<_1, _1, _1>;
  using kernel_schedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong;
  using epilogue_schedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong;
};

/// What pass P writes: Fprop's and Dgrad's activations in BF16 (troupe's own kernels write FP32
/// ones), Wgrad's gradients in FP32.
template <pass P>
using output_of = std::conditional_t<P == pass::wgrad, float, element>;

template <class LayoutA, class LayoutB, class Out, class Config>
struct grouped_gemm_of {
  static constexpr int out_alignment = 16 / static_cast<int>(sizeof(Out));
  using epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, typename Config::tile,
      typename Config::cluster, cutlass::epilogue::collective::EpilogueTileAuto, float, float, Out,
      row_major*, out_alignment, Out, row_major*, out_alignment, typename Config::epilogue_schedule,
      cutlass::epilogue::fusion::LinearCombination<Out, float>>::CollectiveOp;
  using mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, element, LayoutA*, 8, element, LayoutB*,
      8, float, typename Config::tile, typename Config::cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename epilogue::SharedStorage))>,
      typename Config::kernel_schedule>::CollectiveOp;
  using kernel = cutlass::gemm::kernel::GemmUniversal<problem_shape, mainloop, epilogue>;
  using gemm = cutlass::gemm::device::GemmUniversalAdapter<kernel>;
};

template <pass P, class Config>
using gemm_of = typename std::conditional_t<
    P == pass::fprop, grouped_gemm_of<row_major, column_major, output_of<P>, Config>,
    std::conditional_t<P == pass::dgrad,
                       grouped_gemm_of<row_major, row_major, output_of<P>, Config>,
                       grouped_gemm_of<column_major, row_major, output_of<P>, Config>>>::gemm;

/// The per-group arrays CUTLASS's grouped kernel reads, carved from the staging buffer.
template <pass P, class Config>
struct problem_arrays {
  using gemm = gemm_of<P, Config>;
  using out = output_of<P>;
  using stride_a = typename gemm::GemmKernel::InternalStrideA;
  using stride_b = typename gemm::GemmKernel::InternalStrideB;
  using stride_c = typename gemm::GemmKernel::InternalStrideC;
  using stride_d = typename gemm::GemmKernel::InternalStrideD;
  typename problem_shape::UnderlyingProblemShape* shapes;
  const element** a;
  const element** b;
  const out** c;
  out** d;
  stride_a* sa;
  stride_b* sb;
  stride_c* sc;
  stride_d* sd;
};

/// A stride whose one dynamic mode (the leading dimension) is `ld`.
template <class Stride>
__device__ Stride leading(std::int64_t ld) {
  Stride s{};
  if constexpr (cute::is_static_v<std::remove_cv_t<std::remove_reference_t<decltype(get<0>(s))>>>)
    get<1>(s) = ld;
  else
    get<0>(s) = ld;
  return s;
}

constexpr std::size_t array_alignment = 256;

__host__ __device__ constexpr std::size_t aligned(std::size_t bytes) {
  return (bytes + array_alignment - 1) / array_alignment * array_alignment;
}

/// Bytes of pass P's arrays for `problems` groups, and where each starts in them.
template <pass P, class Config>
problem_arrays<P, Config> carve(void* base, std::int64_t problems) {
  using arrays = problem_arrays<P, Config>;
  auto* at = static_cast<unsigned char*>(base);
  const auto take = [&](auto*& pointer) {
    using pointee = std::remove_pointer_t<std::remove_reference_t<decltype(pointer)>>;
    pointer = reinterpret_cast<decltype(pointer)>(at);
    at += aligned(sizeof(pointee) * static_cast<std::size_t>(problems));
  };
  arrays r{};
  take(r.shapes), take(r.a), take(r.b), take(r.c), take(r.d);
  take(r.sa), take(r.sb), take(r.sc), take(r.sd);
  return r;
}

template <pass P, class Config>
std::size_t arrays_bytes(std::int64_t problems) {
  using arrays = problem_arrays<P, Config>;
  const auto n = static_cast<std::size_t>(problems);
  return aligned(sizeof(typename problem_shape::UnderlyingProblemShape) * n) +
         4 * aligned(sizeof(void*) * n) + aligned(sizeof(typename arrays::stride_a) * n) +
         aligned(sizeof(typename arrays::stride_b) * n) +
         aligned(sizeof(typename arrays::stride_c) * n) +
         aligned(sizeof(typename arrays::stride_d) * n);
}

/// One thread per problem: its shape, pointers and strides from the experts' offsets.
template <pass P, class Config>
__global__ void describe_problems(arguments args, staged o, problem_arrays<P, Config> out,
                                  std::int64_t tables) {
  using arrays = problem_arrays<P, Config>;
  const std::int64_t problem = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (problem >= args.rows.groups * tables) return;
  const std::int64_t g = problem / tables, table = problem % tables;
  const std::int64_t first = args.rows.offsets[g];
  const int rows = static_cast<int>(args.rows.offsets[g + 1] - first);
  const auto* a = reinterpret_cast<const element*>(o.a);
  const auto* b = reinterpret_cast<const element*>(o.b);
  if constexpr (P == pass::fprop) {
    out.shapes[problem] = {rows, static_cast<int>(args.n), static_cast<int>(args.k)};
    out.a[problem] = a + first * o.lda;
    out.b[problem] = b + g * args.n * o.ldb;
    out.d[problem] = static_cast<element*>(args.c16) + first * args.ldc;
  } else if constexpr (P == pass::dgrad) {
    out.shapes[problem] = {rows, static_cast<int>(args.k), static_cast<int>(args.n)};
    out.a[problem] = a + first * o.lda;
    out.b[problem] = b + g * args.n * o.ldb;
    out.d[problem] = static_cast<element*>(args.c16) + first * args.ldc;
  } else {
    const std::int64_t half = args.n / tables;
    out.shapes[problem] = {rows > 0 ? static_cast<int>(half) : 0, static_cast<int>(args.k), rows};
    out.a[problem] = a + first * o.lda + table * half;
    out.b[problem] = b + first * o.ldb;
    out.d[problem] = table == 0 ? args.weight_grads.first[g] : args.weight_grads.second[g];
    // NOTES: the TMA store needs 16-byte aligned rows; troupe's allocations are 256-byte
    // aligned, so only a caller's view into the middle of one could break this.
    if (reinterpret_cast<std::uintptr_t>(out.d[problem]) % 16 != 0) {
      printf("grouped_gemm (cutlass): expert %lld's weight gradient is not 16-byte aligned\n",
             static_cast<long long>(g));
      __trap();
    }
  }
  out.c[problem] = out.d[problem];
  out.sa[problem] = leading<typename arrays::stride_a>(o.lda);
  out.sb[problem] = leading<typename arrays::stride_b>(o.ldb);
  const std::int64_t ld_out = P == pass::wgrad ? args.k : args.ldc;
  out.sc[problem] = leading<typename arrays::stride_c>(ld_out);
  out.sd[problem] = leading<typename arrays::stride_d>(ld_out);
}

/// The arguments of pass P's grouped GEMM over `problems` groups (the arrays may be unset, for
/// the workspace size).
template <pass P, class Config>
typename gemm_of<P, Config>::Arguments gemm_arguments(const problem_arrays<P, Config>& arrays,
                                                      std::int64_t problems, bool add, int device) {
  using gemm = gemm_of<P, Config>;
  // NOTES: make_kernel_hardware_info asks the driver for the multiprocessors and the clusters
  // that fit; both are fixed per device and kernel, so each is asked once.
  static std::mutex guard;
  static std::map<int, cutlass::KernelHardwareInfo> known;
  cutlass::KernelHardwareInfo hardware;
  {
    std::lock_guard lock(guard);
    auto found = known.find(device);
    if (found == known.end())
      found =
          known
              .emplace(
                  device,
                  cutlass::KernelHardwareInfo::make_kernel_hardware_info<typename gemm::GemmKernel>(
                      device))
              .first;
    hardware = found->second;
  }
  typename gemm::Arguments args;
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  args.problem_shape = {static_cast<int>(problems), arrays.shapes, nullptr};
  args.mainloop = {arrays.a, arrays.sa, arrays.b, arrays.sb};
  args.epilogue = {{}, arrays.c, arrays.sc, arrays.d, arrays.sd};
  args.epilogue.thread.alpha = 1.0f;
  args.epilogue.thread.beta = add ? 1.0f : 0.0f;
  args.hw_info = hardware;
  return args;
}

int current_device() {
  int device = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

template <pass P, class Config>
std::size_t pass_bytes(std::int64_t problems) {
  return aligned(arrays_bytes<P, Config>(problems)) +
         aligned(gemm_of<P, Config>::get_workspace_size(gemm_arguments<P, Config>(
             problem_arrays<P, Config>{}, problems, false, current_device())));
}

template <pass P, class Config>
void run(const arguments& args, const staged& o, void* space, cudaStream_t stream) {
  const std::int64_t tables = P == pass::wgrad && args.weight_grads.second != nullptr ? 2 : 1;
  const std::int64_t problems = args.rows.groups * tables;
  const problem_arrays<P, Config> arrays = carve<P, Config>(space, problems);
  describe_problems<P, Config>
      <<<blocks_for(problems, 128), 128, 0, stream>>>(args, o, arrays, tables);
  TROUPE_CUDA_LAUNCHED();
  const bool add = args.accumulate;
  const auto gemm_args = gemm_arguments<P, Config>(arrays, problems, add, current_device());
  void* workspace = static_cast<unsigned char*>(space) + aligned(arrays_bytes<P, Config>(problems));
  gemm_of<P, Config> gemm;
  const char* kernel = "grouped_gemm (cutlass)";
  require(gemm.can_implement(gemm_args) == cutlass::Status::kSuccess, kernel,
          "CUTLASS cannot run these shapes");
  require(gemm.initialize(gemm_args, workspace, stream) == cutlass::Status::kSuccess, kernel,
          "CUTLASS could not set up the kernel");
  require(gemm.run(stream) == cutlass::Status::kSuccess, kernel, "the launch failed");
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace

std::size_t cutlass_bytes(std::int64_t groups) {
  const std::int64_t problems = 2 * groups;  // Wgrad's stacked tables: two per expert
  return std::max({pass_bytes<pass::fprop, cooperative>(problems),
                   pass_bytes<pass::dgrad, cooperative>(problems),
                   pass_bytes<pass::wgrad, pingpong>(problems)});
}

bool cutlass_supports(pass p, const arguments& args, const void* staging) {
  // TMA: 16-byte aligned rows and starts. The staged operands are (rows padded to 8 BF16, the
  // staging buffer and the weights' copy 256-byte aligned from the allocator: checked, as the
  // per-multiprocessor descriptors in the workspace need 64); Fprop's and Dgrad's BF16 outputs
  // (CUTLASS runs them only where the caller asked for BF16: FP32 ones go to troupe's kernels)
  // need a leading dimension of a multiple of 8, Wgrad's FP32 gradients a k of a multiple of 4,
  // and its second table starts n/2 columns into dy. A reduction of length 0 would store the
  // accumulators uncleared (no k-tile runs): those stay on troupe's kernels.
  const auto at = [](const void* pointer, std::uintptr_t alignment) {
    return reinterpret_cast<std::uintptr_t>(pointer) % alignment == 0;
  };
  if (!at(staging, array_alignment) || !at(args.weights.rounded, 16) || !at(args.a16, 16) ||
      !at(args.b16, 16))
    return false;
  const bool bf16_out =
      args.c16 != nullptr && !args.accumulate && args.ldc % 8 == 0 && at(args.c16, 16);
  switch (p) {
    case pass::fprop:
      return args.k > 0 && bf16_out;
    case pass::dgrad:
      return args.n > 0 && bf16_out;
    case pass::wgrad:
      return args.k % 4 == 0 && (args.weight_grads.second == nullptr || args.n / 2 % 8 == 0);
  }
  return false;
}

void launch_cutlass(pass p, const arguments& args, void* stream, void* staging) {
  const cudaStream_t s = as_stream(stream);
  const staged o = stage_operands(p, args, staging, s, "grouped_gemm (cutlass)");
  void* space =
      static_cast<unsigned char*>(staging) + aligned(staging_bytes(args.rows, args.n, args.k));
  switch (p) {
    case pass::fprop:
      return run<pass::fprop, cooperative>(args, o, space, s);
    case pass::dgrad:
      return run<pass::dgrad, cooperative>(args, o, space, s);
    case pass::wgrad:
      return run<pass::wgrad, pingpong>(args, o, space, s);
  }
}

}  // namespace troupe::kernels::cuda::grouped
