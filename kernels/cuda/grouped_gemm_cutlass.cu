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

// NOTES: the global gradient norm reads every gradient once more after backward (6.5 ms of a
// medium step, nine tenths of it the routed experts'). Wgrad holds each gradient tile in registers
// as it stores it, so its epilogue also sums the squares there: this node passes the stored
// values D = alpha acc + beta C through, each thread adds up the squares of its elements of the
// tile, each warp adds its lanes', and lane 0 writes the warp's sum to a slot of its own (tile,
// warp). No atomics: square_sums_kernel then adds each problem's slots in a fixed order, so the
// sum has the same bits every run. The per-thread sums are FP32 (a tile's 128 values a thread:
// relative error about 1e-5 at most, for a norm that only scales the update; a gradient value
// beyond 1.8e19 in magnitude, whose square overflows FP32, makes the sum infinite, and the step
// then stops on a "non-finite gradient" although that value itself is finite).
constexpr int slot_warps = 8;  // slots per tile: a tile's epilogue has 4 (ping-pong) or 8 warps

struct square_sums {
  struct SharedStorage {};
  struct Arguments {
    float* slots = nullptr;  // [problems][tiles_per_problem][slot_warps]; null: no sums
    int tiles_n = 0;         // tiles along N of every problem
    int tiles_per_problem = 0;
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args,
                                                  void*) {
    return args;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const&) {
    return true;
  }
  template <class ProblemShape>
  static std::size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*,
                                              cudaStream_t, cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }

  CUTLASS_HOST_DEVICE square_sums() {}
  CUTLASS_HOST_DEVICE square_sums(Params const& p, SharedStorage const&) : params(p) {}
  Params params;

  CUTLASS_DEVICE bool is_producer_load_needed() const { return false; }
  CUTLASS_DEVICE bool is_C_load_needed() const { return false; }

  template <class... Args>
  CUTLASS_DEVICE auto get_producer_load_callbacks(
      cutlass::epilogue::fusion::detail::ProducerLoadArgs<Args...> const&) {
    return cutlass::epilogue::fusion::detail::EmptyProducerLoadCallbacks{};
  }

  template <class CoordTensor, class Residue>
  struct ConsumerStoreCallbacks : cutlass::epilogue::fusion::detail::EmptyConsumerStoreCallbacks {
    CUTLASS_DEVICE ConsumerStoreCallbacks(float* slot, CoordTensor coords, Residue residue)
        : slot(slot), coords(coords), residue(residue) {}
    float* slot;
    CoordTensor coords;  // (CPY,CPY_M,CPY_N,EPI_M,EPI_N): this thread's elements' coordinates
    Residue residue;
    float sum = 0.0f;

    template <class ElementAccumulator, class ElementInput, int FragmentSize>
    CUTLASS_DEVICE auto visit(cutlass::Array<ElementAccumulator, FragmentSize> const&, int epi_v,
                              int epi_m, int epi_n,
                              cutlass::Array<ElementInput, FragmentSize> const& input) {
      Tensor here = coords(_, _, _, epi_m, epi_n);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < FragmentSize; ++i)
        if (elem_less(here(epi_v * FragmentSize + i), residue)) {
          const float v = static_cast<float>(input[i]);
          sum += v * v;
        }
      return input;
    }

    CUTLASS_DEVICE void end() {
      CUTLASS_PRAGMA_UNROLL
      for (int offset = 16; offset > 0; offset /= 2)
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
      if (slot != nullptr && threadIdx.x % 32 == 0) *slot = sum;
    }
  };

  template <bool ReferenceSrc, class... Args>
  CUTLASS_DEVICE auto get_consumer_store_callbacks(
      cutlass::epilogue::fusion::detail::ConsumerStoreArgs<Args...> const& args) {
    auto [m, n, k, l] = args.tile_coord_mnkl;
    float* slot = nullptr;
    if (params.slots != nullptr)
      slot = params.slots + ((static_cast<std::int64_t>(l) * params.tiles_per_problem +
                              static_cast<std::int64_t>(m) * params.tiles_n + n) *
                                 slot_warps +
                             (args.thread_idx / 32) % slot_warps);
    return ConsumerStoreCallbacks<decltype(args.tCcD), decltype(args.residue_tCcD)>(
        slot, args.tCcD, args.residue_tCcD);
  }
};

/// Wgrad's epilogue: D = alpha acc + beta C (C not read when beta is 0), its squares summed.
using wgrad_fusion = cutlass::epilogue::fusion::Sm90EVT<
    square_sums,
    cutlass::epilogue::fusion::Sm90LinearCombinationPtrArray<float, float, float, float>>;

/// sums[p] = the slots of problem p added in order (float64), one block per problem.
__global__ void square_sums_kernel(const float* slots, std::int64_t per_problem, double* sums) {
  __shared__ double shared[32];
  const float* mine = slots + blockIdx.x * per_problem;
  double sum = 0.0;
  for (std::int64_t i = threadIdx.x; i < per_problem; i += blockDim.x) sum += mine[i];
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) sums[blockIdx.x] = sum;
}

/// What pass P writes: Fprop's and Dgrad's activations in BF16 (troupe's own kernels write FP32
/// ones), Wgrad's gradients in FP32.
template <pass P>
using output_of = std::conditional_t<P == pass::wgrad, float, element>;

template <class LayoutA, class LayoutB, class Out, class Config, class Fusion>
struct grouped_gemm_of {
  static constexpr int out_alignment = 16 / static_cast<int>(sizeof(Out));
  using epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, typename Config::tile,
      typename Config::cluster, cutlass::epilogue::collective::EpilogueTileAuto, float, float, Out,
      row_major*, out_alignment, Out, row_major*, out_alignment, typename Config::epilogue_schedule,
      Fusion>::CollectiveOp;
  using mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, element, LayoutA*, 8, element, LayoutB*,
      8, float, typename Config::tile, typename Config::cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename epilogue::SharedStorage))>,
      typename Config::kernel_schedule>::CollectiveOp;
  using kernel = cutlass::gemm::kernel::GemmUniversal<problem_shape, mainloop, epilogue>;
  using gemm = cutlass::gemm::device::GemmUniversalAdapter<kernel>;
};

using activation_fusion = cutlass::epilogue::fusion::LinearCombination<element, float>;

template <pass P, class Config>
using gemm_of = typename std::conditional_t<
    P == pass::fprop,
    grouped_gemm_of<row_major, column_major, output_of<P>, Config, activation_fusion>,
    std::conditional_t<
        P == pass::dgrad,
        grouped_gemm_of<row_major, row_major, output_of<P>, Config, activation_fusion>,
        grouped_gemm_of<column_major, row_major, output_of<P>, Config, wgrad_fusion>>>::gemm;

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
                                                      std::int64_t problems, bool add, int device,
                                                      square_sums::Arguments sums = {}) {
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
  const float alpha = 1.0f, beta = add ? 1.0f : 0.0f;
  if constexpr (P == pass::wgrad) {
    // The tree's arguments, children first: (the linear combination: beta, C, (alpha, acc,
    // the product), the multiply-add), then the square sums.
    using scalar = typename cutlass::epilogue::fusion::Sm90ScalarBroadcastPtrArray<
        float, Stride<_0, _0, int64_t>>::Arguments;
    scalar alpha_args{}, beta_args{};
    alpha_args.scalars[0] = alpha;
    beta_args.scalars[0] = beta;
    args.epilogue.thread = {{beta_args, {}, {alpha_args, {}, {}}, {}}, sums};
  } else {
    args.epilogue.thread.alpha = alpha;
    args.epilogue.thread.beta = beta;
  }
  args.hw_info = hardware;
  return args;
}

template <class Config>
constexpr std::int64_t tile_m = cute::size<0>(typename Config::tile{});
template <class Config>
constexpr std::int64_t tile_n = cute::size<1>(typename Config::tile{});

constexpr std::int64_t ceil_tiles(std::int64_t extent, std::int64_t tile) {
  return (extent + tile - 1) / tile;
}

/// Bytes of Wgrad's square-sum slots for `problems` problems of [m, k] gradients.
std::size_t slots_bytes(std::int64_t problems, std::int64_t m, std::int64_t k) {
  return aligned(static_cast<std::size_t>(problems * ceil_tiles(m, tile_m<pingpong>) *
                                          ceil_tiles(k, tile_n<pingpong>) * slot_warps) *
                 sizeof(float));
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
  // Wgrad's square sums: the slots after the workspace, zeroed (an expert without rows has no
  // tiles, and its gradient is zeros: onto_zeros, or zeroed by the caller), added per problem
  // after the GEMM.
  square_sums::Arguments sums{};
  float* slots = nullptr;
  std::int64_t per_problem = 0;
  if constexpr (P == pass::wgrad) {
    if (args.squares != nullptr) {
      sums.tiles_n = static_cast<int>(ceil_tiles(args.k, tile_n<Config>));
      sums.tiles_per_problem =
          static_cast<int>(ceil_tiles(args.n / tables, tile_m<Config>) * sums.tiles_n);
      per_problem = std::int64_t{sums.tiles_per_problem} * slot_warps;
      slots = static_cast<float*>(
          static_cast<void*>(static_cast<unsigned char*>(space) + pass_bytes<P, Config>(problems)));
      sums.slots = slots;
      TROUPE_CUDA_CHECK(cudaMemsetAsync(
          slots, 0, static_cast<std::size_t>(problems * per_problem) * sizeof(float), stream));
    }
  }
  const auto gemm_args = gemm_arguments<P, Config>(arrays, problems, add, current_device(), sums);
  void* workspace = static_cast<unsigned char*>(space) + aligned(arrays_bytes<P, Config>(problems));
  gemm_of<P, Config> gemm;
  const char* kernel = "grouped_gemm (cutlass)";
  require(gemm.can_implement(gemm_args) == cutlass::Status::kSuccess, kernel,
          "CUTLASS cannot run these shapes");
  require(gemm.initialize(gemm_args, workspace, stream) == cutlass::Status::kSuccess, kernel,
          "CUTLASS could not set up the kernel");
  require(gemm.run(stream) == cutlass::Status::kSuccess, kernel, "the launch failed");
  TROUPE_CUDA_LAUNCHED();
  if (slots != nullptr) {
    square_sums_kernel<<<static_cast<unsigned>(problems), 256, 0, stream>>>(slots, per_problem,
                                                                            args.squares);
    TROUPE_CUDA_LAUNCHED();
  }
}

}  // namespace

std::size_t cutlass_bytes(std::int64_t groups, std::int64_t n, std::int64_t k) {
  const std::int64_t problems = 2 * groups;  // Wgrad's stacked tables: two per expert
  return std::max({pass_bytes<pass::fprop, cooperative>(problems),
                   pass_bytes<pass::dgrad, cooperative>(problems),
                   pass_bytes<pass::wgrad, pingpong>(problems) + slots_bytes(problems, n, k)});
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
