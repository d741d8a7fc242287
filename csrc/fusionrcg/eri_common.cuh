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

// G_m of ir.Boys for m = 0..M: the Boys values of 1/r (KIND = 0), of the
// long-range erf(omega r)/r (KIND = 1) or of the short-range
// erfc(|omega| r)/r (KIND = -1); theta = omega^2 / (omega^2 + rho).
template <int KIND, int M>
FR_INLINE void boys_operator(double T, double rho, double omega, double* G) {
  if (KIND == 0) {
    boys<M>(T, G);
    return;
  }
  const double w2 = omega * omega;
  const double theta = w2 / (w2 + rho);
  double lr[M + 1];
  boys<M>(theta * T, KIND > 0 ? G : lr);
  if (KIND < 0) boys<M>(T, G);
  double s = sqrt(theta);
  for (int m = 0; m <= M; ++m) {
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
// on the host (g++ for the CPU tests) one thread plays every lane, unless the
// warp emulation of the tests (FR_WARP_EMULATION) runs 32 host threads.
#if defined(__CUDA_ARCH__) || defined(FR_WARP_EMULATION)
#define FR_LANES 32
FR_INLINE void fr_syncwarp() { __syncwarp(); }
#else
#define FR_LANES 1
inline void fr_syncwarp() {}
#endif

// Op words (codegen.encode_table documents the encoding).  Slot k of this
// thread is sp[k * SS]; slot 0 holds 1.0.  ooff[g]: block offset of the g-th
// contraction tuple.
FR_INLINE bool fr_is_output(unsigned h) { return (h & 3u) == 2u; }
// Kind 3 (the levels form of a pairmap variant): accumulator h >> 6 of the
// quartet is out[(h >> 6) * ostride], not a slot; the first primitive quartet
// that runs sets it, the later ones add to it.
FR_INLINE bool fr_is_acc_out(unsigned h) { return (h & 3u) == 3u; }

// A stage's products coefficient x symbol, one slot each from slot first:
// pairs[i] = coef index | symbol slot << 16.  Lanes lane, lane + step, ...
// of a warp share the work (lane 0, step 1 for one thread).
template <int SS>
FR_INLINE void fr_pair_products(const unsigned* __restrict__ pairs, int n, const double* __restrict__ coef,
                                volatile double* sp, int first, int lane, int step) {
  for (int i = lane; i < n; i += step) {
    const unsigned p = pairs[i];
    sp[(first + i) * SS] = coef[p & 0xFFFFu] * sp[(p >> 16) * SS];
  }
}

// A term word: source slot | pair slot << 17 (codegen._SRC_BITS).
FR_INLINE unsigned fr_src_slot(unsigned w) { return w & 0x1FFFFu; }
FR_INLINE unsigned fr_pair_slot(unsigned w) { return w >> 17; }

// A term: the product in its pair slot times its source slot.
template <int SS>
FR_INLINE double fr_term(unsigned w, volatile double* sp) {
  return sp[fr_pair_slot(w) * SS] * sp[fr_src_slot(w) * SS];
}

// Finish an op whose terms summed to v: store it (or add it, kind 1) to its
// destination slot, or write the output element (kind 2, v the source value)
// or the accumulator (kind 3, v its new value).
template <int SS>
FR_INLINE void fr_store(unsigned h, double v, volatile double* sp, double* __restrict__ out, long ostride,
                        const long* ooff) {
  if (fr_is_output(h)) {
    out[(ooff[(h >> 2) & 15u] + (long)(h >> 6)) * ostride] = v;
    return;
  }
  if (fr_is_acc_out(h)) {
    out[(long)(h >> 6) * ostride] = v;
    return;
  }
  const unsigned dst = h >> 6;
  if ((h & 3u) == 1u) v = sp[dst * SS] + v;
  sp[dst * SS] = v;
}

// One op of the table form at code; returns the number of words it took.
template <int SS>
FR_INLINE int run_op(const unsigned* __restrict__ code, volatile double* sp, double* __restrict__ out,
                     long ostride, const long* ooff) {
  const unsigned h = code[0];
  if (fr_is_output(h)) {
    fr_store<SS>(h, sp[code[1] * SS], sp, out, ostride, ooff);
    return 2;
  }
  const int nt = (h >> 2) & 15u;
  double v = 0.0;
  for (int t = 1; t <= nt; ++t) v += fr_term<SS>(code[t], sp);
  fr_store<SS>(h, v, sp, out, ostride, ooff);
  return 1 + nt;
}

// Interpreter of the table form: the ops one after the other.
template <int SS>
FR_INLINE void run_ops(const unsigned* __restrict__ code, int nwords, volatile double* sp,
                       double* __restrict__ out, long ostride, const long* ooff) {
  for (int i = 0; i < nwords;) i += run_op<SS>(code + i, sp, out, ostride, ooff);
}

// Levels form.  A level's ops are independent; op i = lane + 32 k of level L
// (k < FR_LEVEL_OPS) is in op row k, whose width w_k (its longest op's words,
// 0 for a row without ops) is field k of the level's shape word,
// levels[2L+1] = ops | w_k << (8 + FR_LEVEL_ROW_BITS k), and the op's word j
// is at code[levels[2L] + (w_0 + .. + w_{k-1} + j) * 32 + lane]
// (codegen.level_records, which puts the longest ops of a level first).  No
// load of a level depends on another, a warp's load of one word is one
// coalesced line, a lane without an op reads a zero header (no real op has
// one), and a lane loads only its rows' words: the bounds are the same for the
// whole warp, and a word not loaded is zero, never used (an op reads its
// words up to its term count, within its row's width).
// FR_LEVEL_OPS (ops per lane and level) and FR_LEVEL_ROW_BITS come from
// codegen.LEVEL_OPS_PER_LANE and LEVEL_ROW_BITS.
#ifndef FR_LEVEL_OPS
#define FR_LEVEL_OPS 2
#endif
#ifndef FR_LEVEL_ROW_BITS
#define FR_LEVEL_ROW_BITS 5
#endif

template <int W>
FR_INLINE void fr_fetch_level(const unsigned* __restrict__ code, int base, int shape, int lane,
                              unsigned (&r)[FR_LEVEL_OPS][W]) {
  const unsigned* row = code + base + lane;
#pragma unroll
  for (int k = 0; k < FR_LEVEL_OPS; ++k) {
    const int words = (shape >> (8 + FR_LEVEL_ROW_BITS * k)) & ((1 << FR_LEVEL_ROW_BITS) - 1);
#pragma unroll
    for (int j = 0; j < W; ++j) r[k][j] = j < words ? row[j * 32] : 0u;
    row += words * 32;
  }
}

// The operands of an op of a level, all read before any is used (a lane
// issues its loads back to back and waits once, not once a term): every word
// j >= 1 taken as a term, so that no load sits behind a branch.  A word past
// the op's terms (or of a lane without an op) is zero and reads slot 0,
// 1.0, twice: a valid address, its pair value set to zero here, off the
// chain of multiply-adds.  An output's one term is its source times slot 0.
// prior: a kind-3 accumulator's value so far where acc_add, else zero.
template <int W>
struct FrOperands {
  double pair[W - 1], src[W - 1], prior;
};

template <int W>
FR_INLINE void fr_op_operands(const unsigned (&r)[W], volatile double* sp, const double* out, long ostride,
                              bool acc_add, FrOperands<W>& o) {
  const unsigned h = r[0];
  const int n = h == 0u ? 0 : fr_is_output(h) ? 1 : (int)((h >> 2) & 15u);
#pragma unroll
  for (int t = 1; t < W; ++t) {
    const double pair = sp[fr_pair_slot(r[t])];
    o.pair[t - 1] = t <= n ? pair : 0.0;
    o.src[t - 1] = sp[fr_src_slot(r[t])];
  }
  o.prior = fr_is_acc_out(h) && acc_add ? out[(long)(h >> 6) * ostride] : 0.0;
}

// The value an op computes from its operands: its terms in order, added to
// the prior value.
template <int W>
FR_INLINE double fr_op_value(const FrOperands<W>& o) {
  double v = o.prior;
#pragma unroll
  for (int t = 0; t < W - 1; ++t) v += o.pair[t] * o.src[t];
  return v;
}

// One level of run_levels on the GPU: fetch level L + 1 (at base, shape) into
// next while computing level L from cur, then the offsets of level L + 2.
template <int W>
FR_INLINE void fr_level_step(const unsigned* __restrict__ code, const int* __restrict__ levels, int n_levels,
                             int L, unsigned (&cur)[FR_LEVEL_OPS][W], unsigned (&next)[FR_LEVEL_OPS][W],
                             int& base, int& shape, volatile double* sp, double* __restrict__ out, long ostride,
                             const long* ooff, int lane, bool acc_add) {
  fr_fetch_level<W>(code, base, shape, lane, next);
  base = L + 2 < n_levels ? levels[2 * L + 4] : 0;
  shape = L + 2 < n_levels ? levels[2 * L + 5] : 0;
  FrOperands<W> o[FR_LEVEL_OPS];
#pragma unroll
  for (int k = 0; k < FR_LEVEL_OPS; ++k) fr_op_operands<W>(cur[k], sp, out, ostride, acc_add, o[k]);
  double v[FR_LEVEL_OPS];
#pragma unroll
  for (int k = 0; k < FR_LEVEL_OPS; ++k) v[k] = fr_op_value<W>(o[k]);
#pragma unroll
  for (int k = 0; k < FR_LEVEL_OPS; ++k)
    if (cur[k][0]) fr_store<1>(cur[k][0], v[k], sp, out, ostride, ooff);
  fr_syncwarp();
}

// Run the levels of a stage.  On the GPU each lane fetches the next level's
// ops while it computes this one (two levels a turn, the two word buffers
// trading roles, so that no buffer is copied), and reads all operands of its
// ops before it writes any result.  The host runs each level backwards, so
// that a dependency inside a level would show in the CPU tests.  acc_add: the
// kind-3 accumulators in out already hold an earlier primitive quartet's sum.
template <int W>
FR_INLINE void run_levels(const unsigned* __restrict__ code, const int* __restrict__ levels, int n_levels,
                          volatile double* sp, double* __restrict__ out, long ostride, const long* ooff,
                          int lane, bool acc_add) {
#if FR_LANES == 32
  unsigned a[FR_LEVEL_OPS][W], b[FR_LEVEL_OPS][W];
  if (n_levels > 0) fr_fetch_level<W>(code, levels[0], levels[1], lane, a);
  int base = n_levels > 1 ? levels[2] : 0, shape = n_levels > 1 ? levels[3] : 0;  // level L + 1
  for (int L = 0; L < n_levels; L += 2) {
    fr_level_step<W>(code, levels, n_levels, L, a, b, base, shape, sp, out, ostride, ooff, lane, acc_add);
    if (L + 1 < n_levels)
      fr_level_step<W>(code, levels, n_levels, L + 1, b, a, base, shape, sp, out, ostride, ooff, lane, acc_add);
  }
#else
  (void)lane;
  for (int L = 0; L < n_levels; ++L)
    for (int k = FR_LEVEL_OPS - 1; k >= 0; --k)
      for (int ln = 31; ln >= 0; --ln) {
        unsigned r[FR_LEVEL_OPS][W];
        fr_fetch_level<W>(code, levels[2 * L], levels[2 * L + 1], ln, r);
        if (!r[k][0]) continue;
        FrOperands<W> o;
        fr_op_operands<W>(r[k], sp, out, ostride, acc_add, o);
        fr_store<1>(r[k][0], fr_op_value<W>(o), sp, out, ostride, ooff);
      }
#endif
}

}  // namespace fusionrcg
