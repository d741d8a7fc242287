// Shared pieces of the generated ERI code (pyscf_fusionrcg/codegen.py).
//
// Everything here is __host__ __device__ so the generated per-quartet
// functions also build with g++ for the CPU tests.
#pragma once

#include "fusionrcg/boys.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FR_INLINE __host__ __device__ __forceinline__
#else
#define FR_INLINE inline
#endif

// A primitive pair whose Gaussian product prefactor exp(-ab/(a+b) |A-B|^2)
// is below exp(-FR_EXP_CUTOFF) is skipped: with PySCF's normalised
// coefficients its contribution stays far below 1e-14.
#ifndef FR_EXP_CUTOFF
#define FR_EXP_CUTOFF 50.0
#endif

namespace fusionrcg {

// 2 pi^(5/2), the constant of the primitive ERI prefactor.
constexpr double kTwoPi52 = 34.98683665524972497;

// G_m of ir.Boys for m = 0..mmax: the Boys values of 1/r (KIND = 0), of the
// long-range erf(omega r)/r (KIND = 1) or of the short-range
// erfc(|omega| r)/r (KIND = -1); theta = omega^2 / (omega^2 + rho).
template <int KIND>
FR_INLINE void boys_operator(int mmax, double T, double rho, double omega, double* G) {
  if (KIND == 0) {
    boys(mmax, T, G);
    return;
  }
  const double w2 = omega * omega;
  const double theta = w2 / (w2 + rho);
  double lr[32];
  boys(mmax, theta * T, KIND > 0 ? G : lr);
  if (KIND < 0) boys(mmax, T, G);
  double s = sqrt(theta);
  for (int m = 0; m <= mmax; ++m) {
    if (KIND > 0) {
      G[m] *= s;
    } else {
      G[m] -= s * lr[m];
    }
    s *= theta;
  }
}

}  // namespace fusionrcg

namespace fusionrcg {

// The levels form (warp tier) runs one work item on the 32 lanes of a warp;
// on the host (g++ for the CPU tests) one thread plays every lane.
#if defined(__CUDA_ARCH__)
#define FR_LANES 32
FR_INLINE void fr_syncwarp() { __syncwarp(); }
#else
#define FR_LANES 1
inline void fr_syncwarp() {}
#endif

// One op of the op stream at code (codegen.encode_table documents the
// encoding); returns the number of words it took.  Slot k of this thread is
// sp[k * SS]; slot 0 holds 1.0 so that a term without a symbol needs no
// branch.  ooff[g]: block offset of the g-th contraction tuple of the work item.
template <int SS>
FR_INLINE int run_op(const unsigned* __restrict__ code, const double* __restrict__ coef, volatile double* sp,
                     double* __restrict__ out, long ostride, const long* ooff) {
  const unsigned h = code[0];
  if ((h & 3u) == 2u) {  // output
    out[(ooff[(h >> 2) & 15u] + (long)(h >> 6)) * ostride] = sp[code[1] * SS];
    return 2;
  }
  const int nt = (h >> 2) & 15u;
  double v = 0.0;
  for (int t = 1; t <= nt; ++t) {
    const unsigned w = code[t];
    v += coef[w >> 23] * sp[((w >> 17) & 63u) * SS] * sp[(w & 0x1FFFFu) * SS];
  }
  const unsigned dst = h >> 6;
  if ((h & 3u) == 1u) v = sp[dst * SS] + v;  // accumulate
  sp[dst * SS] = v;
  return 1 + nt;
}

// Interpreter of the table form: the ops one after the other.
template <int SS>
FR_INLINE void run_ops(const unsigned* __restrict__ code, int nwords, const double* __restrict__ coef,
                       volatile double* sp, double* __restrict__ out, long ostride, const long* ooff) {
  for (int i = 0; i < nwords;) i += run_op<SS>(code + i, coef, sp, out, ostride, ooff);
}

// Interpreter of the levels form: the ops of a level (op i at code + ops[i],
// level L = ops [levels[L], levels[L+1])) are independent, so the lanes share
// them; the warp meets before the next level.  The host runs each level
// backwards, so that a dependency inside a level would show in the CPU tests.
FR_INLINE void run_levels(const unsigned* __restrict__ code, const int* __restrict__ ops,
                          const int* __restrict__ levels, int n_levels, const double* __restrict__ coef,
                          volatile double* sp, double* __restrict__ out, long ostride, const long* ooff,
                          int lane) {
  for (int L = 0; L < n_levels; ++L) {
#if defined(__CUDA_ARCH__)
    for (int i = levels[L] + lane; i < levels[L + 1]; i += FR_LANES)
#else
    (void)lane;
    for (int i = levels[L + 1] - 1; i >= levels[L]; --i)
#endif
      run_op<1>(code + ops[i], coef, sp, out, ostride, ooff);
    fr_syncwarp();
  }
}

}  // namespace fusionrcg
