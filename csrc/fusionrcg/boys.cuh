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
//   (2m+1), which is stable.  At most ~60 terms for mmax = 16.  Where the top
//   order is a compile-time constant (the generated kernels: boys<M>), a
//   Taylor table of the generated code gives F_M instead (FrBoysTaylor).
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

// 1 / (2j + 1) for j < 232, correctly rounded (Python's 1.0 / (2 * j + 1),
// checked by tests/fusionrcg/test_codegen.py).  The series and the downward
// recursion multiply by these instead of dividing: an FP64 division is a long
// dependent sequence of instructions on the GPU, and the loop below is a
// chain of them; the product with a rounded reciprocal adds half an ulp a step.
#define FR_INV_ODD_VALUES \
    1.0, 0.3333333333333333, 0.2, 0.14285714285714285, \
    0.1111111111111111, 0.09090909090909091, 0.07692307692307693, 0.06666666666666667, \
    0.058823529411764705, 0.05263157894736842, 0.047619047619047616, 0.043478260869565216, \
    0.04, 0.037037037037037035, 0.034482758620689655, 0.03225806451612903, \
    0.030303030303030304, 0.02857142857142857, 0.02702702702702703, 0.02564102564102564, \
    0.024390243902439025, 0.023255813953488372, 0.022222222222222223, 0.02127659574468085, \
    0.02040816326530612, 0.0196078431372549, 0.018867924528301886, 0.01818181818181818, \
    0.017543859649122806, 0.01694915254237288, 0.01639344262295082, 0.015873015873015872, \
    0.015384615384615385, 0.014925373134328358, 0.014492753623188406, 0.014084507042253521, \
    0.0136986301369863, 0.013333333333333334, 0.012987012987012988, 0.012658227848101266, \
    0.012345679012345678, 0.012048192771084338, 0.011764705882352941, 0.011494252873563218, \
    0.011235955056179775, 0.01098901098901099, 0.010752688172043012, 0.010526315789473684, \
    0.010309278350515464, 0.010101010101010102, 0.009900990099009901, 0.009708737864077669, \
    0.009523809523809525, 0.009345794392523364, 0.009174311926605505, 0.009009009009009009, \
    0.008849557522123894, 0.008695652173913044, 0.008547008547008548, 0.008403361344537815, \
    0.008264462809917356, 0.008130081300813009, 0.008, 0.007874015748031496, \
    0.007751937984496124, 0.007633587786259542, 0.007518796992481203, 0.007407407407407408, \
    0.0072992700729927005, 0.007194244604316547, 0.0070921985815602835, 0.006993006993006993, \
    0.006896551724137931, 0.006802721088435374, 0.006711409395973154, 0.006622516556291391, \
    0.006535947712418301, 0.0064516129032258064, 0.006369426751592357, 0.006289308176100629, \
    0.006211180124223602, 0.006134969325153374, 0.006060606060606061, 0.005988023952095809, \
    0.005917159763313609, 0.005847953216374269, 0.005780346820809248, 0.005714285714285714, \
    0.005649717514124294, 0.00558659217877095, 0.0055248618784530384, 0.00546448087431694, \
    0.005405405405405406, 0.0053475935828877, 0.005291005291005291, 0.005235602094240838, \
    0.0051813471502590676, 0.005128205128205128, 0.005076142131979695, 0.005025125628140704, \
    0.004975124378109453, 0.0049261083743842365, 0.004878048780487805, 0.004830917874396135, \
    0.004784688995215311, 0.004739336492890996, 0.004694835680751174, 0.004651162790697674, \
    0.004608294930875576, 0.0045662100456621, 0.004524886877828055, 0.004484304932735426, \
    0.0044444444444444444, 0.004405286343612335, 0.004366812227074236, 0.004329004329004329, \
    0.004291845493562232, 0.00425531914893617, 0.004219409282700422, 0.0041841004184100415, \
    0.004149377593360996, 0.00411522633744856, 0.004081632653061225, 0.004048582995951417, \
    0.004016064257028112, 0.00398406374501992, 0.003952569169960474, 0.00392156862745098, \
    0.0038910505836575876, 0.003861003861003861, 0.0038314176245210726, 0.0038022813688212928, \
    0.0037735849056603774, 0.003745318352059925, 0.0037174721189591076, 0.0036900369003690036, \
    0.003663003663003663, 0.0036363636363636364, 0.0036101083032490976, 0.0035842293906810036, \
    0.0035587188612099642, 0.0035335689045936395, 0.0035087719298245615, 0.003484320557491289, \
    0.0034602076124567475, 0.003436426116838488, 0.0034129692832764505, 0.003389830508474576, \
    0.003367003367003367, 0.0033444816053511705, 0.0033222591362126247, 0.0033003300330033004, \
    0.003278688524590164, 0.003257328990228013, 0.003236245954692557, 0.003215434083601286, \
    0.003194888178913738, 0.0031746031746031746, 0.0031545741324921135, 0.003134796238244514, \
    0.003115264797507788, 0.0030959752321981426, 0.003076923076923077, 0.0030581039755351682, \
    0.00303951367781155, 0.0030211480362537764, 0.003003003003003003, 0.0029850746268656717, \
    0.002967359050445104, 0.0029498525073746312, 0.002932551319648094, 0.0029154518950437317, \
    0.002898550724637681, 0.002881844380403458, 0.0028653295128939827, 0.002849002849002849, \
    0.0028328611898017, 0.0028169014084507044, 0.0028011204481792717, 0.002785515320334262, \
    0.002770083102493075, 0.0027548209366391185, 0.0027397260273972603, 0.0027247956403269754, \
    0.0027100271002710027, 0.0026954177897574125, 0.002680965147453083, 0.0026666666666666666, \
    0.002652519893899204, 0.002638522427440633, 0.0026246719160104987, 0.0026109660574412533, \
    0.0025974025974025974, 0.002583979328165375, 0.002570694087403599, 0.0025575447570332483, \
    0.002544529262086514, 0.002531645569620253, 0.0025188916876574307, 0.002506265664160401, \
    0.0024937655860349127, 0.0024813895781637717, 0.0024691358024691358, 0.002457002457002457, \
    0.0024449877750611247, 0.0024330900243309003, 0.002421307506053269, 0.0024096385542168677, \
    0.002398081534772182, 0.002386634844868735, 0.0023752969121140144, 0.002364066193853428, \
    0.002352941176470588, 0.00234192037470726, 0.002331002331002331, 0.002320185614849188, \
    0.0023094688221709007, 0.0022988505747126436, 0.002288329519450801, 0.002277904328018223, \
    0.0022675736961451248, 0.002257336343115124, 0.0022471910112359553, 0.0022371364653243847, \
    0.0022271714922048997, 0.0022172949002217295, 0.002207505518763797, 0.002197802197802198, \
    0.002188183807439825, 0.002178649237472767, 0.0021691973969631237, 0.0021598272138228943,
#if defined(__CUDA_ARCH__)
static __constant__ const double kInvOdd[] = {FR_INV_ODD_VALUES};
#else
static const double kInvOdd[] = {FR_INV_ODD_VALUES};
#endif
#undef FR_INV_ODD_VALUES
// the series reads kInvOdd[mmax + 1 + k] for mmax < 32, k < FR_BOYS_MAX_TERMS
static_assert(sizeof(kInvOdd) / sizeof(double) >= 32 + FR_BOYS_MAX_TERMS, "kInvOdd is too short");

// 1 / sqrt(x) for x > 0.  On the GPU one reciprocal square root (a MUFU
// approximation and Newton steps) where sqrt and a division would be two such
// sequences, each with its own slow-path check; within 1 ulp (CUDA's rsqrt).
FR_HD inline double fr_rsqrt(double x) {
#if defined(__CUDA_ARCH__)
  return rsqrt(x);
#else
  return 1.0 / sqrt(x);
#endif
}

// 1 / x from r = fr_rsqrt(x): r * r and one Newton step (two FMAs), within
// about half an ulp where r * r alone is 1-2 ulp off: recursions multiply by
// it once a step (the upward Boys recursion, the VRR), so its error would grow
// with the order.
FR_HD inline double fr_recip_from_rsqrt(double x, double r) {
  const double q = r * r;
  return fma(q, fma(-x, q, 1.0), q);
}

// The erf branch: F_0 = sqrt(pi/T)/2 erf(sqrt T), then upward (e = exp(-T)).
FR_HD inline void boys_upward(int mmax, double T, double e, double* F) {
  const double r = fr_rsqrt(T);
  const double inv_2t = 0.5 * fr_recip_from_rsqrt(T, r);
  // 0.5 * sqrt(pi) = 0.886226925452758...
  double f = 0.88622692545275801365 * erf(T * r) * r;
  F[0] = f;
  for (int m = 0; m < mmax; ++m) {
    f = ((2.0 * m + 1.0) * f - e) * inv_2t;
    F[m + 1] = f;
  }
}

// F[mmax] = f, then the downward recursion to F[0] (e = exp(-T)).
FR_HD inline void boys_downward(int mmax, double T, double e, double f, double* F) {
  const double two_t = 2.0 * T;
  F[mmax] = f;
  for (int m = mmax - 1; m >= 0; --m) {
    f = (two_t * f + e) * kInvOdd[m];
    F[m] = f;
  }
}

// Fill F[0..mmax] with F_m(T); T >= 0, any mmax < 32: the series at the top
// order below the switch point.
FR_HD inline void boys(int mmax, double T, double* F) {
  const double e = exp(-T);
  if (T < 1.35 * mmax + 1.5) {
    const double two_t = 2.0 * T;
    double term = 1.0;
    double sum = 1.0;
    // term k is (2T)^k / ((2M+3)...(2M+2k+1)): the terms grow while 2T is
    // above the next odd number, then fall at least geometrically
    for (int k = 0; k < FR_BOYS_MAX_TERMS; ++k) {
      term *= two_t * kInvOdd[mmax + 1 + k];
      sum += term;
      if (term < 1e-17 * sum) break;
    }
    boys_downward(mmax, T, e, e * sum * kInvOdd[mmax], F);
  } else {
    boys_upward(mmax, T, e, F);
  }
}

// The top order's Taylor table of the generated code (codegen.boys_tables_source,
// from pyscf_fusionrcg/boys.py's taylor_table): FrBoysTaylor<M>::table()[i *
// kBoysTaylorTerms + k] = F_{M+k}(i / kBoysTaylorSteps) for the grid points
// below the switch point.  Near a grid point T0, F_M(T) = sum_k F_{M+k}(T0)
// (T0 - T)^k / k!; with |T0 - T| <= 1/32 the eight terms leave out less than
// 3e-17 of F_M.
template <int M>
struct FrBoysTaylor;
constexpr int kBoysTaylorTerms = 8;
constexpr double kBoysTaylorSteps = 16.0;

// boys() for a top order known at compile time: below the switch point the
// Taylor table instead of the series, eight loads and multiply-adds for its
// tens of dependent terms, which every lane of a warp waits for as soon as
// one lane needs them.
template <int M>
FR_HD inline void boys(double T, double* F) {
  const double e = exp(-T);
  if (T < 1.35 * M + 1.5) {
    const double x = T * kBoysTaylorSteps;
    const int i = (int)(x + 0.5);
    const double dt = (i - x) * (1.0 / kBoysTaylorSteps);    // T0 - T, exact
    const double* row = FrBoysTaylor<M>::table() + i * kBoysTaylorTerms;
    const double inv_k[kBoysTaylorTerms] = {1.0, 1.0, 0.5, 1.0 / 3.0, 0.25, 0.2, 1.0 / 6.0, 1.0 / 7.0};
    double f = row[kBoysTaylorTerms - 1];
#pragma unroll
    for (int k = kBoysTaylorTerms - 1; k > 0; --k) f = row[k - 1] + f * (dt * inv_k[k]);
    boys_downward(M, T, e, f, F);
  } else {
    boys_upward(M, T, e, F);
  }
}

}  // namespace fusionrcg
