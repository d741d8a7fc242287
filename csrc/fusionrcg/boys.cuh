// Boys function F_m(T) = int_0^1 t^(2m) exp(-T t^2) dt for m = 0..mmax, in FP64.
//
// Header-only and __host__ __device__ so that the same code runs in the ERI
// kernels and in the g++-built CPU tests (tests/fusionrcg/test_codegen.py).
//
// Two branches, each within about 3e-15 relative of the exact value for
// m <= 28 (checked against mpmath):
// * T < 1.35 mmax + 1.5: the series F_M(T) = exp(-T) sum_k (2T)^k / ((2M+1)
//   (2M+3)...(2M+2k+1)) at the top order M = mmax (positive terms: no
//   cancellation), then the downward recursion F_m = (2T F_{m+1} + exp(-T)) /
//   (2m+1), which is stable.  At most ~60 terms for mmax = 16.
// * otherwise: F_0 = sqrt(pi/T)/2 erf(sqrt T) and the upward recursion
//   F_{m+1} = ((2m+1) F_m - exp(-T)) / (2T).  The subtracted exp(-T) cancels
//   digits when T is not well above m; the switch point keeps that loss
//   below ~3e-15 (at T = mmax + 1.5 it would reach 1e-14).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FR_HD __host__ __device__
#else
#define FR_HD
#include <cmath>
#endif

#ifndef FR_BOYS_MAX_TERMS
#define FR_BOYS_MAX_TERMS 200
#endif

namespace fusionrcg {

// Fill F[0..mmax] with F_m(T); T >= 0.  mmax is usually a compile-time
// constant at the call site, so the recursions unroll.
FR_HD inline void boys(int mmax, double T, double* F) {
  const double e = exp(-T);
  if (T < 1.35 * mmax + 1.5) {
    const double two_t = 2.0 * T;
    double denom = 2.0 * mmax + 1.0;
    double term = 1.0;
    double sum = 1.0;
    // terms grow while 2T > denom, then fall at least geometrically
    for (int k = 0; k < FR_BOYS_MAX_TERMS; ++k) {
      denom += 2.0;
      term *= two_t / denom;
      sum += term;
      if (term < 1e-17 * sum) break;
    }
    double f = e * sum / (2.0 * mmax + 1.0);
    F[mmax] = f;
    for (int m = mmax - 1; m >= 0; --m) {
      f = (two_t * f + e) / (2.0 * m + 1.0);
      F[m] = f;
    }
  } else {
    const double st = sqrt(T);
    const double inv_2t = 0.5 / T;
    // 0.5 * sqrt(pi) = 0.886226925452758...
    double f = 0.88622692545275801365 * erf(st) / st;
    F[0] = f;
    for (int m = 0; m < mmax; ++m) {
      f = ((2.0 * m + 1.0) * f - e) * inv_2t;
      F[m + 1] = f;
    }
  }
}

}  // namespace fusionrcg
