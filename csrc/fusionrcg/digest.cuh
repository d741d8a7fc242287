// Digestion of one quartet's ERI block into J and K, shared by digest.cu's
// fr_digest_quartet (blocks read back from global memory) and the register
// tier's fused kernels (pyscf_fusionrcg/codegen.py: the block straight from
// the registers it was computed in).  The formulas, the degeneracy and the
// output order are digest.cu's (see its header).
#pragma once

// atomicAdd(addr, v) from every lane of a full warp, one atomic per run of
// consecutive lanes with equal addresses (a segmented sum over the warp).
// Lanes without work pass addr = nullptr and v = 0.
__device__ __forceinline__ void fr_warp_add(double* addr, double v) {
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x & 31;
  const unsigned long long mine = (unsigned long long)addr;
  const unsigned long long before = __shfl_up_sync(full, mine, 1);
  const unsigned long long after = __shfl_down_sync(full, mine, 1);
  const unsigned heads = __ballot_sync(full, lane == 0 || before != mine);
  if (heads != full) {   // some run is longer than one lane (warp-uniform branch)
    // run of lane i: the number of run heads at lanes <= i
    const int run = __popc(heads & (full >> (31 - lane)));
    for (int offset = 1; offset < 32; offset <<= 1) {
      const double up = __shfl_up_sync(full, v, offset);
      if (lane >= offset && __popc(heads & (full >> (31 - (lane - offset)))) == run) v += up;
    }
  }
  // the last lane of each run holds the run's sum
  if (addr != nullptr && (lane == 31 || after != mine)) atomicAdd(addr, v);
}

// 1 / 2^k, k counting which of a == b, c == d, {a, b} == {c, d} hold.
__device__ __forceinline__ double fr_degeneracy(int a, int b, int c, int d) {
  const int k = (a == b) + (c == d) + ((a == c && b == d) || (a == d && b == c));
  return 0.125 * (8 >> k);   // exact, without a double division
}

// out[X, Y] += f * sum over U, W of v * D[U, W] (digest.cu's fr_blocks
// notation) for a whole block of dims DI..DL in registers (v, C order); every
// lane runs the same unrolled loops (fr_warp_add).
template <int DI, int DJ, int DK, int DL, int X, int Y, int U, int W>
__device__ __forceinline__ void fr_quartet_block(const double* v, const int* ao, double f,
                                                 const double* __restrict__ dm, double* out,
                                                 int nao, bool adds) {
  constexpr int dims[4] = {DI, DJ, DK, DL};
  constexpr int strides[4] = {DJ * DK * DL, DK * DL, DL, 1};
#pragma unroll
  for (int x = 0; x < dims[X]; ++x) {
#pragma unroll
    for (int y = 0; y < dims[Y]; ++y) {
      double acc = 0.0;
      if (adds) {
#pragma unroll
        for (int u = 0; u < dims[U]; ++u)
#pragma unroll
          for (int w = 0; w < dims[W]; ++w)
            acc += v[x * strides[X] + y * strides[Y] + u * strides[U] + w * strides[W]]
                   * dm[(long)(ao[U] + u) * nao + ao[W] + w];
      }
      fr_warp_add(adds ? out + (long)(ao[X] + x) * nao + ao[Y] + y : nullptr, f * acc);
    }
  }
}

// All six outputs of one quartet's block v (AO offsets ao, degeneracy f) for
// every density set; s and the set counts are the same for every lane, and
// lanes without a quartet pass adds = false.
template <int DI, int DJ, int DK, int DL>
__device__ __forceinline__ void fr_digest_block(const double* v, const int* ao, double f, int nao,
                                                const double* __restrict__ dm_j, double* jh, int nset_j,
                                                const double* __restrict__ dm_k, double* kh, int nset_k,
                                                bool adds) {
  const long nn = (long)nao * nao;
  const int nset_max = nset_j > nset_k ? nset_j : nset_k;
  for (int s = 0; s < nset_max; ++s) {
    if (s < nset_j) {
      const double* D = dm_j + s * nn;
      double* J = jh + s * nn;
      fr_quartet_block<DI, DJ, DK, DL, 0, 1, 2, 3>(v, ao, f, D, J, nao, adds);
      fr_quartet_block<DI, DJ, DK, DL, 2, 3, 0, 1>(v, ao, f, D, J, nao, adds);
    }
    if (s < nset_k) {
      const double* D = dm_k + s * nn;
      double* K = kh + s * nn;
      fr_quartet_block<DI, DJ, DK, DL, 0, 3, 1, 2>(v, ao, f, D, K, nao, adds);
      fr_quartet_block<DI, DJ, DK, DL, 1, 3, 0, 2>(v, ao, f, D, K, nao, adds);
      fr_quartet_block<DI, DJ, DK, DL, 0, 2, 1, 3>(v, ao, f, D, K, nao, adds);
      fr_quartet_block<DI, DJ, DK, DL, 1, 2, 0, 3>(v, ao, f, D, K, nao, adds);
    }
  }
}
