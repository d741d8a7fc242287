// FlashSchNet device helpers shared by the CFConv kernels: activation with its
// derivative, the cosine envelope, and the PTX wrappers of the 16-bit path.
//
// Compile-time parameters (NVRTC -D defines, set by ase_flashschnet/fused.py):
//   F      number of filters (multiple of 64)
//   NRBF   number of Gaussians
//   ACT    0 tanh, 1 shifted softplus, 2 silu
//   PREC   0 fp32 (FFMA), 1 fp16 tensor cores, 2 bf16 tensor cores
#pragma once

#ifndef F
#error "define F (number of filters)"
#endif
#ifndef NRBF
#error "define NRBF (number of Gaussians)"
#endif
#ifndef ACT
#define ACT 0
#endif
#ifndef PREC
#define PREC 0
#endif

namespace fs {

typedef unsigned int u32;
typedef unsigned short u16;

// Activation y = act(z) and dy/dz. The 16-bit path rounds y to 8 or 11 bits right
// after, so it uses the hardware approximations (MUFU); fp32 keeps libm accuracy.
__device__ __forceinline__ float act_and_slope(float z, float& slope) {
#if ACT == 0
#if PREC == 0
  const float y = tanhf(z);
#else
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(z));
#endif
  slope = 1.0f - y * y;
  return y;
#else
#if PREC == 0
  const float s = 1.0f / (1.0f + expf(-z));
#else
  const float s = __fdividef(1.0f, 1.0f + __expf(-z));
#endif
#if ACT == 1
  slope = s;  // d softplus / dz = sigmoid
  // softplus(z) - log 2 without overflow: max(z, 0) + log1p(exp(-|z|)) - log 2.
#if PREC == 0
  return fmaxf(z, 0.0f) + log1pf(expf(-fabsf(z))) - 0.69314718055994531f;
#else
  return fmaxf(z, 0.0f) + __logf(1.0f + __expf(-fabsf(z))) - 0.69314718055994531f;
#endif
#else
  slope = s * (1.0f + z * (1.0f - s));  // d (z sigmoid(z)) / dz
  return z * s;
#endif
#endif
}

// Cosine envelope C(d) = 0.5 (cos(pi d / rc) + 1) for d < rc, else 0, and C'(d).
__device__ __forceinline__ float envelope(float d, float cutoff, float& slope) {
  if (!(d < cutoff)) {
    slope = 0.0f;
    return 0.0f;
  }
  float s, c;
  sincospif(d / cutoff, &s, &c);
  slope = -0.5f * 3.14159265358979323846f * (s / cutoff);
  return 0.5f * (c + 1.0f);
}

// threadIdx.x read afresh where it is called: the compiler cannot hoist it out of
// the tile loop, so addresses derived from it are recomputed (a few integer ops)
// instead of being held in a register across the filter products, or spilled.
__device__ __forceinline__ int fresh_tid() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
}

// Bring the 128-byte line holding p into L1 ahead of a load (holds no register).
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

// First atom a in [0, n] with ptr[a] >= target (ptr is non-decreasing).
__device__ __forceinline__ int lower_bound(const int* __restrict__ ptr, int n, long long target) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if ((long long)ptr[mid] < target) lo = mid + 1; else hi = mid;
  }
  return lo;
}

#if PREC != 0
#if PREC == 1
#define FS_MMA_TYPE "f16"
#else
#define FS_MMA_TYPE "bf16"
#endif

// Two floats rounded to nearest into one 32-bit register (lo in the low half).
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  u32 r;
  asm("cvt.rn." FS_MMA_TYPE "x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
  return static_cast<u32>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

// D += A (16x16, row) * B (16x8, col), fp32 accumulators.
__device__ __forceinline__ void mma16816(float& d0, float& d1, float& d2, float& d3, const u32 (&a)[4],
                                         u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." FS_MMA_TYPE "." FS_MMA_TYPE ".f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

}  // namespace fs
