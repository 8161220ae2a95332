#pragma once

// The tensor-core primitives of the BF16 kernels (attention_bf16.cu, grouped_gemm_bf16.cu):
// mma.sync m16n8k16 with BF16 operands and FP32 accumulation, and the ldmatrix loads that bring
// its operands from row-major shared memory tiles. Internal to kernels/cuda.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), for lane t:
//   A (16 x 16): a[0] rows t/4, columns 2(t%4) + {0, 1}; a[1] rows + 8; a[2] columns + 8;
//                a[3] both + 8;
//   B (16 x 8):  b[0] rows 2(t%4) + {0, 1}, column t/4; b[1] rows + 8;
//   C (16 x 8):  c[0], c[1] row t/4, columns 2(t%4) + {0, 1}; c[2], c[3] row t/4 + 8.
// Two adjacent C tiles hold exactly the elements of one A operand (see as_operand), which is
// what lets flash attention feed its probabilities to the next product without shared memory.

#include <cuda_bf16.h>

#include <cstdint>

namespace troupe::kernels::cuda::mma {

using bf16 = __nv_bfloat16;

__device__ inline unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

/// Four 8 x 8 matrices; lane t gives the address of row t % 8 of matrix t / 8 (16-byte aligned).
__device__ inline void ldmatrix_x4(unsigned (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

/// The same, each matrix transposed on its way into the registers.
__device__ inline void ldmatrix_x4_trans(unsigned (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

/// c += a b for one m16n8k16 tile.
__device__ inline void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Two BF16 roundings in one register, `low` in the lower half (the lower column).
__device__ inline unsigned pack(float low, float high) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const unsigned*>(&v);
}

/// Four floats rounded to BF16 and stored as one 8-byte word.
__device__ inline void store4(bf16* to, float4 v) {
  uint2 packed;
  packed.x = pack(v.x, v.y);
  packed.y = pack(v.z, v.w);
  *reinterpret_cast<uint2*>(to) = packed;
}

// Operand loads from tiles in shared memory with leading dimension `ld` (BF16 elements, a
// multiple of 8; rows at 16-byte boundaries).

/// A operand of rows [r0, r0 + 16), depth [c0, c0 + 16) from a tile stored [row][depth].
__device__ inline void load_a(unsigned (&a)[4], const bf16* s, int ld, int r0, int c0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(a, s + (r0 + lane % 8 + lane / 8 % 2 * 8) * ld + c0 + lane / 16 * 8);
}

/// The same from a tile stored [depth][row].
__device__ inline void load_a_transposed(unsigned (&a)[4], const bf16* s, int ld, int r0, int c0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(a, s + (c0 + lane % 8 + lane / 16 * 8) * ld + r0 + lane / 8 % 2 * 8);
}

/// B operands of the n tiles [n0, n0 + 8) (b[0], b[1]) and [n0 + 8, n0 + 16) (b[2], b[3]) over
/// depth [k0, k0 + 16), from a tile stored [n][depth] (K's rows in S = Q K^T).
__device__ inline void load_b_rows(unsigned (&b)[4], const bf16* s, int ld, int n0, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(b, s + (n0 + lane % 8 + lane / 16 * 8) * ld + k0 + lane / 8 % 2 * 8);
}

/// The same from a tile stored [depth][n] (V's rows in O = P V).
__device__ inline void load_b_columns(unsigned (&b)[4], const bf16* s, int ld, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(b, s + (k0 + lane % 8 + lane / 8 % 2 * 8) * ld + n0 + lane / 16 * 8);
}

// Asynchronous copies from global to shared memory (cp.async, sm_80+): they bypass the
// registers, so a tile's loads overlap the products on the previous one.

/// 16 bytes from `from` to `to` (both 16-byte aligned); zeros instead when `valid` is false.
__device__ inline void copy16(bf16* to, const bf16* from, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(to)),
               "l"(from), "r"(valid ? 16 : 0));
}

/// Closes the group of copies issued since the last commit.
__device__ inline void commit_copies() {
  asm volatile("cp.async.commit_group;\n" ::);
}

/// Waits until at most `Pending` committed groups are still in flight (this thread's copies).
template <int Pending>
__device__ inline void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

}  // namespace troupe::kernels::cuda::mma
