// Digestion of one quartet's ERI block into J and K, shared by digest.cu's
// fr_digest_quartet (blocks read back from global memory) and the register
// tier's fused kernels (pyscf_fusionrcg/codegen.py: the block straight from
// the registers it was computed in).  The formulas, the degeneracy and the
// output order are digest.cu's (see its header).
#pragma once

// The six output blocks, in the order of their element ranges: out[X, Y] +=
// sum over U, W of g * D[U, W], with the quartet's indices 0..3 = p q r s.
// constexpr: digest.cu's walk over the blocks folds into a few multiplies
// and compares, and fr_digest_block takes each block's indices as template
// arguments.
struct FrBlock {
  int X, Y, U, W;
  bool exchange;   // D and the output are K's (else J's)
};
__constant__ constexpr FrBlock fr_blocks[6] = {
    {0, 1, 2, 3, false},   // Jh[p,q] from Dj[r,s]
    {2, 3, 0, 1, false},   // Jh[r,s] from Dj[p,q]
    {0, 3, 1, 2, true},    // Kh[p,s] from D[q,r]
    {1, 3, 0, 2, true},    // Kh[q,s] from D[p,r]
    {0, 2, 1, 3, true},    // Kh[p,r] from D[q,s]
    {1, 2, 0, 3, true}};   // Kh[q,r] from D[p,s]

// Warp-aggregated atomics: the lanes of a full warp add their values to
// addresses that come in runs of consecutive lanes (quartets sorted by
// shells), one atomicAdd per run, of the run's segmented sum.  The runs of one
// output block are the same for all its elements and density sets (equal
// addresses there are equal AO offsets of the block's two indices), so
// fr_runs finds them once from a per-lane key and fr_run_add only sums.
struct FrRuns {
  unsigned heads;   // lanes that start a run
  int span;         // lanes of this lane's run before it
  bool last;        // this lane ends its run: it holds the sum and adds it
};

__device__ __forceinline__ FrRuns fr_runs(unsigned long long key) {
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x & 31;
  const unsigned long long before = __shfl_up_sync(full, key, 1);
  const unsigned long long after = __shfl_down_sync(full, key, 1);
  FrRuns r;
  r.heads = __ballot_sync(full, lane == 0 || before != key);
  // the head of this lane's run: the highest head at or below the lane
  r.span = lane - (31 - __clz(r.heads & (full >> (31 - lane))));
  r.last = lane == 31 || after != key;
  return r;
}

// atomicAdd(addr, v) aggregated over the runs r; lanes without work pass
// addr = nullptr and v = 0 (and a key of their own to fr_runs).
__device__ __forceinline__ void fr_run_add(const FrRuns& r, double* addr, double v) {
  if (r.heads != 0xffffffffu) {   // some run is longer than one lane (warp-uniform)
    for (int offset = 1; offset < 32; offset <<= 1) {
      const double up = __shfl_up_sync(0xffffffffu, v, offset);
      if (offset <= r.span) v += up;
    }
  }
  if (addr != nullptr && r.last) atomicAdd(addr, v);
}

// fr_run_add for one address per lane, its own key.
__device__ __forceinline__ void fr_warp_add(double* addr, double v) {
  fr_run_add(fr_runs((unsigned long long)addr), addr, v);
}

// 1 / 2^k, k counting which of a == b, c == d, {a, b} == {c, d} hold.
__device__ __forceinline__ double fr_degeneracy(int a, int b, int c, int d) {
  const int k = (a == b) + (c == d) + ((a == c && b == d) || (a == d && b == c));
  return 0.125 * (8 >> k);   // exact, without a double division
}

// The runs of output block (X, Y) in a warp: lanes with equal AO offsets of
// X and Y; lanes without a quartet form runs of their own.
template <int X, int Y>
__device__ __forceinline__ FrRuns fr_block_runs(const int* ao, bool adds) {
  return fr_runs(adds ? (unsigned long long)(unsigned)ao[X] << 32 | (unsigned)ao[Y] : ~0ull);
}

// The warp's 32 lanes reduced and scattered: each lane starts with m values
// (elements 0..m-1 of a chunk) and halves them at each offset 16, 8, ...:
// lanes with the offset bit keep the upper half, the others the lower, and
// add their partner's copy of the half they keep; once one value is left the
// remaining offsets add it whole.  At the end v[0] of a lane is the warp's
// sum of element `first` (past m: padding, nothing to add), held by the lanes
// whose bits below the last halving offset are zero, and copies elsewhere.
// Halving m values costs about m shuffled doubles instead of the 5 m of
// fr_run_add's scan.
template <int M, int O>
__device__ __forceinline__ void fr_scatter_sum(double* v, int& first) {
  if constexpr (O > 0) {
    if constexpr (M == 1) {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
    } else {
      constexpr int H = (M + 1) / 2;
      const bool upper = (threadIdx.x & O) != 0;
#pragma unroll
      for (int i = 0; i < H; ++i) {
        const double lo = v[i], hi = i + H < M ? v[i + H] : 0.0;
        v[i] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, O);
      }
      if (upper) first += H;
    }
    fr_scatter_sum<(M + 1) / 2, O / 2>(v, first);
  }
}

// Lanes that hold fr_scatter_sum's sums of m values (one copy each): the
// zero bits below the last halving offset.
__device__ constexpr int fr_halvings(int m) { return m > 1 ? 1 + fr_halvings((m + 1) / 2) : 0; }

template <int M>
__device__ __forceinline__ bool fr_scatter_holder() {
  return (threadIdx.x & ((32 >> fr_halvings(M)) - 1)) == 0;
}

// sum over U, W of v[x, y, U, W] * D[U, W] (digest.cu's fr_blocks notation)
template <int DI, int DJ, int DK, int DL, int X, int Y, int U, int W>
__device__ __forceinline__ double fr_block_element(const double* v, const int* ao,
                                                   const double* __restrict__ dm, int nao, int x, int y) {
  constexpr int dims[4] = {DI, DJ, DK, DL};
  constexpr int strides[4] = {DJ * DK * DL, DK * DL, DL, 1};
  double acc = 0.0;
#pragma unroll
  for (int u = 0; u < dims[U]; ++u)
#pragma unroll
    for (int w = 0; w < dims[W]; ++w)
      acc += v[x * strides[X] + y * strides[Y] + u * strides[U] + w * strides[W]]
             * dm[(long)(ao[U] + u) * nao + ao[W] + w];
  return acc;
}

//: Elements of an output block computed and added together (registers: two
//: per element).
#define FR_SCATTER_CHUNK 8

// The lanes of a warp in at most two runs (warp-uniform): lanes [0, split)
// and [split, 32) (split 32: one run), each run's AO offsets of the output
// block's two indices, and whether it adds.
struct FrTwoRuns {
  bool two_or_fewer;
  int split;
  int ax0, ay0, ax1, ay1;
  bool adds0, adds1;
};

template <int X, int Y>
__device__ __forceinline__ FrTwoRuns fr_two_runs(const FrRuns& r, const int* ao, bool adds) {
  const unsigned full = 0xffffffffu;
  FrTwoRuns t;
  t.two_or_fewer = __popc(r.heads) <= 2;
  t.split = r.heads == 1u ? 32 : __ffs(r.heads & ~1u) - 1;
  const int head = t.two_or_fewer ? t.split & 31 : 0;
  t.ax0 = __shfl_sync(full, ao[X], 0);
  t.ay0 = __shfl_sync(full, ao[Y], 0);
  t.adds0 = __shfl_sync(full, (int)adds, 0) != 0;
  t.ax1 = __shfl_sync(full, ao[X], head);
  t.ay1 = __shfl_sync(full, ao[Y], head);
  t.adds1 = __shfl_sync(full, (int)adds, head) != 0;
  return t;
}

// Elements C0.. of output block (X, Y) of fr_quartet_block, a chunk of up to
// FR_SCATTER_CHUNK at a time.  When the lanes are in at most two runs the
// chunk is reduced and scattered over the lanes once per run
// (fr_scatter_sum, the other run's lanes adding zeros) and each sum added by
// one lane, the chunk's adds from one instruction; otherwise each element is
// summed over its runs (fr_run_add).
template <int DI, int DJ, int DK, int DL, int X, int Y, int U, int W, int C0>
__device__ __forceinline__ void fr_block_chunks(const double* v, const int* ao, double f,
                                                const double* __restrict__ dm, double* out, int nao,
                                                bool adds, const FrRuns& r, const FrTwoRuns& t) {
  constexpr int dims[4] = {DI, DJ, DK, DL};
  constexpr int E = dims[X] * dims[Y];
  constexpr int M = E - C0 < FR_SCATTER_CHUNK ? E - C0 : FR_SCATTER_CHUNK;
  double val[M];
#pragma unroll
  for (int i = 0; i < M; ++i)
    val[i] = adds ? f * fr_block_element<DI, DJ, DK, DL, X, Y, U, W>(v, ao, dm, nao, (C0 + i) / dims[Y],
                                                                     (C0 + i) % dims[Y]) : 0.0;
  if (t.two_or_fewer) {
    const int lane = threadIdx.x & 31;
#pragma unroll 1
    for (int run = 0; run < (t.split == 32 ? 1 : 2); ++run) {
      const bool mine = (lane < t.split) == (run == 0);
      double part[M];
#pragma unroll
      for (int i = 0; i < M; ++i) part[i] = mine ? val[i] : 0.0;
      int first = 0;
      fr_scatter_sum<M, 16>(part, first);
      if ((run ? t.adds1 : t.adds0) && fr_scatter_holder<M>() && first < M) {
        const int e = C0 + first;
        atomicAdd(out + (long)((run ? t.ax1 : t.ax0) + e / dims[Y]) * nao + (run ? t.ay1 : t.ay0) + e % dims[Y],
                  part[0]);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < M; ++i)
      fr_run_add(r, adds ? out + (long)(ao[X] + (C0 + i) / dims[Y]) * nao + ao[Y] + (C0 + i) % dims[Y] : nullptr,
                 val[i]);
  }
  if constexpr (C0 + M < E)
    fr_block_chunks<DI, DJ, DK, DL, X, Y, U, W, C0 + M>(v, ao, f, dm, out, nao, adds, r, t);
}

// out[X, Y] += f * sum over U, W of v * D[U, W] for a whole block of dims
// DI..DL in registers (v, C order), the block's runs found once for all its
// elements (fr_block_chunks: at most two runs, as in warps of kets of one or
// two bra pairs for J[a, b], cost about a fifth of the shuffles of more).
template <int DI, int DJ, int DK, int DL, int X, int Y, int U, int W>
__device__ __forceinline__ void fr_quartet_block(const double* v, const int* ao, double f,
                                                 const double* __restrict__ dm, double* out,
                                                 int nao, bool adds) {
  const FrRuns r = fr_block_runs<X, Y>(ao, adds);
  fr_block_chunks<DI, DJ, DK, DL, X, Y, U, W, 0>(v, ao, f, dm, out, nao, adds, r, fr_two_runs<X, Y>(r, ao, adds));
}

// Output blocks B .. E - 1 of fr_blocks, all of J or all of K (the density
// dm and the output out of one set), B and E at compile time.
template <int DI, int DJ, int DK, int DL, int B, int E>
__device__ __forceinline__ void fr_digest_outputs(const double* v, const int* ao, double f, int nao,
                                                  const double* __restrict__ dm, double* out, bool adds) {
  constexpr FrBlock b = fr_blocks[B];
  static_assert(b.exchange == fr_blocks[E - 1].exchange, "blocks B .. E - 1 are all J's or all K's");
  fr_quartet_block<DI, DJ, DK, DL, b.X, b.Y, b.U, b.W>(v, ao, f, dm, out, nao, adds);
  if constexpr (B + 1 < E) fr_digest_outputs<DI, DJ, DK, DL, B + 1, E>(v, ao, f, nao, dm, out, adds);
}

// All six outputs of one quartet's block v (AO offsets ao, degeneracy f) for
// every density set (J's blocks are fr_blocks 0 and 1, K's 2 .. 5); s and the
// set counts are the same for every lane, and lanes without a quartet pass
// adds = false.
template <int DI, int DJ, int DK, int DL>
__device__ __forceinline__ void fr_digest_block(const double* v, const int* ao, double f, int nao,
                                                const double* __restrict__ dm_j, double* jh, int nset_j,
                                                const double* __restrict__ dm_k, double* kh, int nset_k,
                                                bool adds) {
  static_assert(!fr_blocks[1].exchange && fr_blocks[2].exchange, "J's blocks come before K's");
  const long nn = (long)nao * nao;
  const int nset_max = nset_j > nset_k ? nset_j : nset_k;
  for (int s = 0; s < nset_max; ++s) {
    if (s < nset_j) fr_digest_outputs<DI, DJ, DK, DL, 0, 2>(v, ao, f, nao, dm_j + s * nn, jh + s * nn, adds);
    if (s < nset_k) fr_digest_outputs<DI, DJ, DK, DL, 2, 6>(v, ao, f, nao, dm_k + s * nn, kh + s * nn, adds);
  }
}
