#pragma once

// Hopper's warpgroup matrix instructions (wgmma, sm_90a): the shared-memory matrix descriptor, the
// fences around an asynchronous group of products, and m64n128k16 with BF16 operands and FP32
// accumulation. Internal to kernels/cuda; only files built for sm_90a include it.
//
// Operands live in shared memory with the 128-byte swizzle, in one of two layouts:
//  - K-major (the reduction contiguous): a tile of R rows x 64 BF16 (one 128-byte line per row),
//    the 16-byte piece c of row r stored at piece c ^ (r % 8) of its line, every 8 rows (1024
//    bytes, the swizzle's period) one after another, the tile 1024-byte aligned. A product of
//    depth 16 reads 32 bytes of each line: its descriptor starts 32 bytes further per step along K
//    (the hardware applies the swizzle to the address it forms).
//  - MN-major (the rows or columns contiguous; the instruction's transpose flag set, which BF16
//    allows): a line holds 64 consecutive rows (or columns) at one depth, swizzled alike (piece c
//    of depth d at piece c ^ (d % 8)); 8 depths make a 1024-byte atom. Atoms along MN are
//    mn_atom_stride apart (the descriptor's leading byte offset, which the transpose routes to MN)
//    and groups of 8 depths k_group_stride apart (the stride byte offset, routed to K); a product
//    of depth 16 starts two groups further per step.
//
// Accumulator layout of m64nNk16 (PTX ISA, "Register Fragments and Shared Memory Matrix Layouts",
// the D matrix): warp w of the warpgroup holds rows 16w..16w+15; lane t holds, for each 8-column
// piece j, d[4j + 0, 1] at row 16w + t/4, columns 8j + 2(t%4) + {0, 1}, and d[4j + 2, 3] 8 rows
// lower: the mma.sync m16n8 C layout repeated along N.

#include <cstdint>

namespace troupe::kernels::cuda::wgmma {

/// Bytes of one swizzled line (64 BF16) and of one swizzle period (8 lines).
constexpr int line_bytes = 128;
constexpr int period_bytes = 1024;

/// Byte offset of the 16-byte piece `piece` (0..7) of row `row` in a swizzled tile.
__device__ inline std::uint32_t swizzled(int row, int piece) {
  return static_cast<std::uint32_t>(row * line_bytes + ((piece ^ (row % 8)) * 16));
}

/// The descriptor of a K-major, 128-byte-swizzled tile at shared address `address` (1024-byte
/// aligned for the first step; later steps add 32 bytes per 16 of depth): start address >> 4 in
/// bits 0-13, the leading byte offset (unused by swizzled K-major layouts) 0, the stride between
/// 8-row groups (1024 bytes) >> 4 in bits 32-45, swizzle mode 1 (128 bytes) in bits 62-63.
__device__ inline std::uint64_t descriptor(std::uint32_t address) {
  return (static_cast<std::uint64_t>((address & 0x3FFFF) >> 4)) |
         (static_cast<std::uint64_t>(period_bytes >> 4) << 32) | (std::uint64_t{1} << 62);
}

/// The descriptor of an MN-major tile whose 64-wide atoms along MN are `mn_atom_stride` bytes
/// apart and whose groups of 8 depths are `k_group_stride` apart (both multiples of 1024; the
/// start 1024-byte aligned): leading byte offset (MN) in bits 16-29, stride byte offset (K) in
/// bits 32-45, swizzle mode 1 (128 bytes).
__device__ inline std::uint64_t descriptor_mn_major(std::uint32_t address,
                                                    std::uint32_t mn_atom_stride,
                                                    std::uint32_t k_group_stride) {
  return (static_cast<std::uint64_t>((address & 0x3FFFF) >> 4)) |
         (static_cast<std::uint64_t>((mn_atom_stride & 0x3FFFF) >> 4) << 16) |
         (static_cast<std::uint64_t>((k_group_stride & 0x3FFFF) >> 4) << 32) |
         (std::uint64_t{1} << 62);
}

/// Orders this thread's earlier register and shared-memory accesses before the next wgmma.
__device__ inline void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

/// Closes the group of wgmma issued since the last commit.
__device__ inline void commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

/// Waits until at most `Pending` committed groups are still running.
template <int Pending>
__device__ inline void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}

/// Makes this thread's generic-proxy writes to shared memory (ordinary stores, cp.async) visible
/// to the async proxy that wgmma reads through; a barrier must follow before another thread's
/// wgmma reads them.
__device__ inline void fence_shared_for_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/// Keeps the compiler from moving accesses to an accumulator across the asynchronous products.
__device__ inline void hold(float& r) {
  asm volatile("" : "+f"(r)::"memory");
}

/// d[64 x 128] += A[64 x 16] B[128 x 16]^T, both from shared memory (descriptors), FP32
/// accumulation, asynchronous: the result is there after commit() and wait<0>(). `MnMajorA` and
/// `MnMajorB` say which operands are stored MN-major (the instruction's transpose flags).
template <bool MnMajorA = false, bool MnMajorB = false>
__device__ inline void m64n128k16(float (&d)[64], std::uint64_t a, std::uint64_t b) {
  asm volatile(
      "{\n"
      ".reg .pred accumulate;\n"
      "setp.ne.b32 accumulate, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63 "
      "}, "
      "%64, %65, accumulate, 1, 1, %67, %68;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(a), "l"(b), "r"(1), "n"(MnMajorA ? 1 : 0), "n"(MnMajorB ? 1 : 0));
}

}  // namespace troupe::kernels::cuda::wgmma
