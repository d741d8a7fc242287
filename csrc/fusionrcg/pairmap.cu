// The pairmap contracted stage (pyscf_fusionrcg/pairmaps.py): per quartet q,
//
//   Y_q(r, c) = sum_k M_p(k, r) X_q(k, c),   p = pair[q],
//
// run twice by launch.class_blocks: the bra's matrices on the accumulators
// (X_q = acc[u][v], k = u), then the ket's on the result (k = v), which
// writes the finished block in the [element][quartet] layout the digestion
// reads.  X and Y are addressed through strides so both steps share this
// kernel.  M_p is stored k-major with its rows padded to a multiple of
// FR_PM_ROWS (zeros), pair p at M + p * nk * nr_pad.
//
// One warp per quartet.  Its work items are (row chunk, column) pairs, chunk
// major, taken by the lanes in turn, so few lanes idle whatever the column
// count; an item keeps FR_PM_ROWS rows of one column in registers.  Along k
// a lane's loads of X_q(k, c) are independent (the loop is unrolled, so
// several are in flight: the accumulators come from device memory), and the
// lanes of one chunk load the same M_p(k, r..r+7), a broadcast from L1
// (consecutive quartets mostly share the bra pair), as 16-byte vectors.
#ifndef FR_PM_ROWS
#define FR_PM_ROWS 8
#endif

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
struct double2 { double x, y; };
#endif

extern "C" __global__ void __launch_bounds__(128) fr_pair_transform(
    int nq, const double* __restrict__ X, long xq, int xk, int xc,
    const double* __restrict__ M, const int* __restrict__ pair, int nk, int nr, int nr_pad, int nc,
    double* __restrict__ Y, long yq, long yr, long yc) {
  const int lane = threadIdx.x & 31;
  const long warps = (long)gridDim.x * (blockDim.x >> 5);
  const int n_items = (nr_pad / FR_PM_ROWS) * nc;
  for (long q = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); q < nq; q += warps) {
    const double* x = X + q * xq;
    const double* m = M + (long)pair[q] * nk * nr_pad;
    double* y = Y + q * yq;
    for (int item = lane; item < n_items; item += 32) {
      const int r0 = item / nc * FR_PM_ROWS, c = item % nc;
      const double* xcol = x + (long)c * xc;
      const double2* mk = reinterpret_cast<const double2*>(m + r0);
      const int step = nr_pad / 2;      // double2 per k
      double acc[FR_PM_ROWS];
#pragma unroll
      for (int t = 0; t < FR_PM_ROWS; ++t) acc[t] = 0.0;
#pragma unroll 4
      for (int k = 0; k < nk; ++k) {
        const double v = xcol[(long)k * xk];
        const double2* row = mk + (long)k * step;
#pragma unroll
        for (int t = 0; t < FR_PM_ROWS / 2; ++t) {
          const double2 w = row[t];
          acc[2 * t] += w.x * v;
          acc[2 * t + 1] += w.y * v;
        }
      }
#pragma unroll
      for (int t = 0; t < FR_PM_ROWS; ++t)
        if (r0 + t < nr) y[(r0 + t) * yr + c * yc] = acc[t];
    }
  }
}
