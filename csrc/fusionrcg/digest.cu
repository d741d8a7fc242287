// Digestion of ERI blocks into J and K (pyscf_fusionrcg/gpu_jk.py).
//
// Input: the blocks of a batch of canonical quartets (a, b, c, d) of one class
// and contraction shape as the ERI kernels write them, g[e * nq + q] with
// e = ((i * dj + j) * dk + k) * dl + l (full block dims di..dl).  The
// digestion follows screening.py's formulas: every quartet is scaled by its
// 8-fold degeneracy (fr_degeneracy, from its shells: a plan need not keep it
// in memory, and every orientation of a quartet gives the same) and scattered
// for all 8 permutations, with
//   Jh[p,q] += deg sum_rs g Dj[r,s]     Jh[r,s] += deg sum_pq g Dj[p,q]
//   Kh[p,s] += deg sum_qr g D[q,r]      Kh[q,s] += deg sum_pr g D[p,r]
//   Kh[p,r] += deg sum_qs g D[q,s]      Kh[q,r] += deg sum_ps g D[p,s]
// where Dj = D + D^T; the caller forms J = Jh + Jh^T and K = Kh + Kh^T
// (or Kh[D] + Kh[D^T]^T for non-hermitian D).  Results are added with
// double-precision atomics (sm_60+).
//
// fr_digest: one thread per (quartet, output element) of the six blocks
// above, the sum over the other two indices kept in a register, so every
// output element of a quartet costs at most one atomic per density set.
// blockIdx.x is the output element e (0 .. n_elem - 1, counted over the
// blocks with density sets in the order above), so everything that depends
// on e (block, indices, strides, density) is uniform per thread block and
// found without dividing a thread index; the quartet block is
// blockIdx.y + gridDim.y * blockIdx.z (gridDim.y is at most 65535).  With the
// element fastest, the blocks the GPU runs at once are all the elements of a
// few quartet blocks: each block element g is read six times (once per
// output block) and each quartet's shells once per element, and those
// re-reads then come from L2, not from device memory.
// Atomics are what this kernel is bound by, so the lanes of a warp that add
// to the same address add once: consecutive threads take consecutive
// quartets of one element, and the plan sorts a class's quartets by shells
// (launch.primitive_order), so the lanes of a warp usually share the bra pair
// (one Jh[p,q] for the warp) and come in runs of equal ket first shell (one
// Kh[p,r] and one Kh[q,r] per run).  The block reads coalesce.
// The warp-aggregated adds, fr_degeneracy and the block digestion of
// fr_digest_quartet are in digest.cuh, which the register tier's fused ERI kernels include too.

#include "fusionrcg/digest.cuh"

// v[i] of four values: selects where an indexed local array would go to
// the stack (i is uniform, from fr_blocks)
template <class T>
__device__ __forceinline__ T fr_pick(int i, T v0, T v1, T v2, T v3) {
  return i == 0 ? v0 : i == 1 ? v1 : i == 2 ? v2 : v3;
}

extern "C" __global__ void fr_digest(
    const double* __restrict__ g, int nq, const int* __restrict__ quartets,
    const int* __restrict__ ao_loc,
    int di, int dj, int dk, int dl, int nao,
    const double* __restrict__ dm_j, double* __restrict__ jh, int nset_j,
    const double* __restrict__ dm_k, double* __restrict__ kh, int nset_k) {
  // the element's block (blocks without density sets have no elements) and
  // its index in it, the same for the whole thread block
  int e = blockIdx.x, b = 0;
  for (; b < 6; ++b) {
    const FrBlock& fb = fr_blocks[b];
    const int n = (fb.exchange ? nset_k : nset_j)
                      ? fr_pick(fb.X, di, dj, dk, dl) * fr_pick(fb.Y, di, dj, dk, dl) : 0;
    if (e < n) break;
    e -= n;
  }
  if (b == 6) return;                       // past the last element: the whole thread block
  const int q0 = (blockIdx.y + gridDim.y * blockIdx.z) * blockDim.x + (threadIdx.x & ~31u);
  if (q0 >= nq) return;                     // whole warps only: fr_warp_add needs every lane
  const int q = q0 + (threadIdx.x & 31);
  const bool active = q < nq;

  const FrBlock fb = fr_blocks[b];
  const int ny = fr_pick(fb.Y, di, dj, dk, dl);
  const int x = e / ny, y = e - x * ny;     // 32-bit, once per thread
  const int nu = fr_pick(fb.U, di, dj, dk, dl), nw = fr_pick(fb.W, di, dj, dk, dl);
  // strides of the block's indices in g, in quartets
  const int s0 = dj * dk * dl, s1 = dk * dl;
  const long su = (long)fr_pick(fb.U, s0, s1, dl, 1) * nq, sw = (long)fr_pick(fb.W, s0, s1, dl, 1) * nq;
  const long sxy = (long)(x * fr_pick(fb.X, s0, s1, dl, 1) + y * fr_pick(fb.Y, s0, s1, dl, 1)) * nq;
  const double* dms = fb.exchange ? dm_k : dm_j;
  double* outs = fb.exchange ? kh : jh;
  const int nset = fb.exchange ? nset_k : nset_j;

  const int* sh = quartets + 4 * (long)(active ? q : 0);
  const int a0 = ao_loc[sh[0]], a1 = ao_loc[sh[1]], a2 = ao_loc[sh[2]], a3 = ao_loc[sh[3]];
  const double f = fr_degeneracy(sh[0], sh[1], sh[2], sh[3]);
  const long nn = (long)nao * nao;
  const long out = (long)(fr_pick(fb.X, a0, a1, a2, a3) + x) * nao + fr_pick(fb.Y, a0, a1, a2, a3) + y;
  const long d0 = (long)fr_pick(fb.U, a0, a1, a2, a3) * nao + fr_pick(fb.W, a0, a1, a2, a3);
  const double* gxy = g + q + sxy;
  // every lane runs the same number of fr_warp_add calls (its shuffles need the full warp)
  const int nset_max = nset_j > nset_k ? nset_j : nset_k;
  for (int s = 0; s < nset_max; ++s) {
    const bool adds = active && s < nset;
    double acc = 0.0;
    if (adds) {
      const double* D = dms + s * nn + d0;
      for (int u = 0; u < nu; ++u)
        for (int w = 0; w < nw; ++w) acc += gxy[u * su + w * sw] * D[(long)u * nao + w];
    }
    fr_warp_add(adds ? outs + s * nn + out : nullptr, f * acc);
  }
}

// fr_digest_quartet: one thread per quartet, for blocks of few elements (the
// s, p and d classes that hold most of a large molecule's quartets: gpu_jk's
// QUARTET_DIGEST_MAX).  Compiled per block shape, FR_DI..FR_DL given as -D
// options: the block sits in registers and is read once for all six outputs,
// and the quartet's shells, AO offsets and degeneracy once instead of once per
// output element.  The outputs, their order and the warp-aggregated atomics
// are fr_digest's; the grid's x runs over blocks of 128 quartets (gpu_jk's
// _DIGEST_BLOCK).  At most 128 registers (4 blocks per SM): without
// the bound the compiler takes 168 for a 27-element block, to load the
// densities early; with it blocks up to 27 elements do not spill (nvcc 13,
// sm_90), 45 spill 52 bytes.
// Larger blocks may come in slabs: gpu_jk compiles the kernel for the dims of
// a slab, the block with its leading index fixed (FR_DI 1), and launches one
// grid row per value of that index, blockIdx.y.  The slab's elements are
// consecutive in g, and fixing the index is shifting its AO offset, so the
// six outputs are the same formulas; where the index is summed over (Jh[r,s],
// Kh[q,s], Kh[q,r]) each slab adds its part, and the atomics add them up.
#ifdef FR_DL
extern "C" __global__ void __launch_bounds__(128, 4) fr_digest_quartet(
    const double* __restrict__ g, int nq, const int* __restrict__ quartets,
    const int* __restrict__ ao_loc, int nao,
    const double* __restrict__ dm_j, double* __restrict__ jh, int nset_j,
    const double* __restrict__ dm_k, double* __restrict__ kh, int nset_k) {
  constexpr int n = FR_DI * FR_DJ * FR_DK * FR_DL;
  const int q0 = blockIdx.x * blockDim.x + (threadIdx.x & ~31u);
  if (q0 >= nq) return;                     // whole warps only: fr_run_add needs every lane
  const int q = q0 + (threadIdx.x & 31);
  const bool active = q < nq;
  const int slab = blockIdx.y;               // 0 for a whole block
  const int* sh = quartets + 4 * (long)(active ? q : 0);
  const int ao[4] = {ao_loc[sh[0]] + slab, ao_loc[sh[1]], ao_loc[sh[2]], ao_loc[sh[3]]};
  const double f = fr_degeneracy(sh[0], sh[1], sh[2], sh[3]);
  double v[n];
#pragma unroll
  for (int e = 0; e < n; ++e) v[e] = active ? g[((long)slab * n + e) * nq + q] : 0.0;
  fr_digest_block<FR_DI, FR_DJ, FR_DK, FR_DL>(v, ao, f, nao, dm_j, jh, nset_j, dm_k, kh, nset_k,
                                           active);
}
#endif
