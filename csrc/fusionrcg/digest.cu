// Digestion of ERI blocks into J and K (pyscf_fusionrcg/gpu_jk.py).
//
// Input: the blocks of a batch of canonical quartets (a, b, c, d) of one class
// and contraction shape as the ERI kernels write them, g[e * nq + q] with
// e = ((i * dj + j) * dk + k) * dl + l (full block dims di..dl), and the
// 8-fold degeneracy factors of screening.py.  The digestion follows that
// module's formulas: every quartet is scaled by its degeneracy and scattered
// for all 8 permutations, with
//   Jh[p,q] += deg sum_rs g Dj[r,s]     Jh[r,s] += deg sum_pq g Dj[p,q]
//   Kh[p,s] += deg sum_qr g D[q,r]      Kh[q,s] += deg sum_pr g D[p,r]
//   Kh[p,r] += deg sum_qs g D[q,s]      Kh[q,r] += deg sum_ps g D[p,s]
// where Dj = D + D^T; the caller forms J = Jh + Jh^T and K = Kh + Kh^T
// (or Kh[D] + Kh[D^T]^T for non-hermitian D).  Results are added with
// double-precision atomics (sm_60+).
//
// fr_digest_bra: one thread per (quartet, bra element i j): Jh[p,q] (one
//   atomic per set, the sum over the ket kept in a register) and the four
//   exchange terms (sums over one ket index in registers, one atomic each).
// fr_digest_ket: one thread per (quartet, ket element k l): Jh[r,s].
// Consecutive threads take consecutive quartets, so the block reads coalesce.

struct FrQuartetAo {
  int p0, q0, r0, s0;
};

__device__ __forceinline__ FrQuartetAo fr_ao(const int* __restrict__ quartets,
                                             const int* __restrict__ ao_loc, int q) {
  const int* s = quartets + 4 * (long)q;
  FrQuartetAo a;
  a.p0 = ao_loc[s[0]];
  a.q0 = ao_loc[s[1]];
  a.r0 = ao_loc[s[2]];
  a.s0 = ao_loc[s[3]];
  return a;
}

extern "C" __global__ void fr_digest_bra(
    const double* __restrict__ g, int nq, const int* __restrict__ quartets,
    const double* __restrict__ deg, const int* __restrict__ ao_loc,
    int di, int dj, int dk, int dl, int nao,
    const double* __restrict__ dm_j, double* __restrict__ jh, int nset_j,
    const double* __restrict__ dm_k, double* __restrict__ kh, int nset_k) {
  const long item = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= (long)nq * di * dj) return;
  const int q = (int)(item % nq);
  const int ij = (int)(item / nq);
  const int i = ij / dj, j = ij % dj;
  const FrQuartetAo a = fr_ao(quartets, ao_loc, q);
  const int p = a.p0 + i, qq = a.q0 + j;
  const double f = deg[q];
  const long nn = (long)nao * nao;
  const long dkl = (long)dk * dl;
  const double* gq = g + (long)ij * dkl * nq + q;   // g[(ij*dkl + kl) * nq + q]
  for (int s = 0; s < nset_j; ++s) {
    const double* D = dm_j + s * nn;
    double acc = 0.0;
    for (int k = 0; k < dk; ++k) {
      const double* Dr = D + (long)(a.r0 + k) * nao + a.s0;
      for (int l = 0; l < dl; ++l) acc += gq[(k * dl + l) * (long)nq] * Dr[l];
    }
    atomicAdd(jh + s * nn + (long)p * nao + qq, f * acc);
  }
  for (int s = 0; s < nset_k; ++s) {
    const double* D = dm_k + s * nn;
    double* K = kh + s * nn;
    const double* Dq = D + (long)qq * nao;   // D[q, .]
    const double* Dp = D + (long)p * nao;    // D[p, .]
    // Kh[p,s] and Kh[q,s]: sums over r for each s
    for (int l = 0; l < dl; ++l) {
      double ps = 0.0, qs = 0.0;
      for (int k = 0; k < dk; ++k) {
        const double v = gq[(k * dl + l) * (long)nq];
        ps += v * Dq[a.r0 + k];
        qs += v * Dp[a.r0 + k];
      }
      atomicAdd(K + (long)p * nao + a.s0 + l, f * ps);
      atomicAdd(K + (long)qq * nao + a.s0 + l, f * qs);
    }
    // Kh[p,r] and Kh[q,r]: sums over s for each r
    for (int k = 0; k < dk; ++k) {
      double pr = 0.0, qr = 0.0;
      for (int l = 0; l < dl; ++l) {
        const double v = gq[(k * dl + l) * (long)nq];
        pr += v * Dq[a.s0 + l];
        qr += v * Dp[a.s0 + l];
      }
      atomicAdd(K + (long)p * nao + a.r0 + k, f * pr);
      atomicAdd(K + (long)qq * nao + a.r0 + k, f * qr);
    }
  }
}

extern "C" __global__ void fr_digest_ket(
    const double* __restrict__ g, int nq, const int* __restrict__ quartets,
    const double* __restrict__ deg, const int* __restrict__ ao_loc,
    int di, int dj, int dk, int dl, int nao,
    const double* __restrict__ dm_j, double* __restrict__ jh, int nset_j) {
  const long item = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= (long)nq * dk * dl) return;
  const int q = (int)(item % nq);
  const int kl = (int)(item / nq);
  const int k = kl / dl, l = kl % dl;
  const FrQuartetAo a = fr_ao(quartets, ao_loc, q);
  const double f = deg[q];
  const long nn = (long)nao * nao;
  const long dkl = (long)dk * dl;
  const double* gq = g + (long)kl * nq + q;         // g[(ij*dkl + kl) * nq + q]
  for (int s = 0; s < nset_j; ++s) {
    const double* D = dm_j + s * nn;
    double acc = 0.0;
    for (int i = 0; i < di; ++i) {
      const double* Dp = D + (long)(a.p0 + i) * nao + a.q0;
      for (int j = 0; j < dj; ++j) acc += gq[(i * dj + j) * dkl * nq] * Dp[j];
    }
    atomicAdd(jh + s * nn + (long)(a.r0 + k) * nao + a.s0 + l, f * acc);
  }
}
