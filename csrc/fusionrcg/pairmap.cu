// The pairmap contracted stage (pyscf_fusionrcg/pairmaps.py): per quartet q,
//
//   Y_q(r, c) = sum_k M_p(k, r) X_q(k, c),   p = pair[q],
//
// run twice by launch.class_blocks: the bra's matrices on the accumulators
// (X_q = acc[u][v], k = u), then the ket's on the result (k = v), which
// writes the finished block in the [element][quartet] layout the digestion
// reads.  X and Y are addressed through strides so both steps share this
// kernel.  M_p is stored k-major with its rows padded to a multiple of
// FR_PM_ROWS (zeros), pairs[p] at M + p * nk * nr_pad.
//
// One warp per quartet: lane c, c + 32, ... of the columns, FR_PM_ROWS rows
// at a time in registers.  A warp's loads of X_q(k, c) are one line, and its
// loads of M_p(k, r..r+7) are the same address on every lane (a broadcast,
// from L1: consecutive quartets mostly share the bra pair).
#ifndef FR_PM_ROWS
#define FR_PM_ROWS 8
#endif

extern "C" __global__ void __launch_bounds__(128) fr_pair_transform(
    int nq, const double* __restrict__ X, long xq, int xk, int xc,
    const double* __restrict__ M, const int* __restrict__ pair, int nk, int nr, int nr_pad, int nc,
    double* __restrict__ Y, long yq, long yr, long yc) {
  const int lane = threadIdx.x & 31;
  const long warps = (long)gridDim.x * (blockDim.x >> 5);
  for (long q = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); q < nq; q += warps) {
    const double* x = X + q * xq;
    const double* m = M + (long)pair[q] * nk * nr_pad;
    double* y = Y + q * yq;
    for (int c = lane; c < nc; c += 32) {
      const double* xcol = x + (long)c * xc;
      for (int r0 = 0; r0 < nr; r0 += FR_PM_ROWS) {
        double acc[FR_PM_ROWS];
#pragma unroll
        for (int t = 0; t < FR_PM_ROWS; ++t) acc[t] = 0.0;
        const double* mk = m + r0;
        for (int k = 0; k < nk; ++k, mk += nr_pad) {
          const double v = xcol[(long)k * xk];
#pragma unroll
          for (int t = 0; t < FR_PM_ROWS; ++t) acc[t] += mk[t] * v;
        }
#pragma unroll
        for (int t = 0; t < FR_PM_ROWS; ++t)
          if (r0 + t < nr) y[(r0 + t) * yr + c * yc] = acc[t];
      }
    }
  }
}
