// Density screening of a kept plan's quartets (pyscf_fusionrcg/gpu_jk.py).
//
// A plan (gpu_jk.JKPlan) keeps a geometry's Schwarz-screened quartets on the
// device as four 16-bit shell indices each (8 bytes instead of 16, so that
// the plans of (H2O)20/def2-QZVP and the like fit), oriented and in primitive
// order.  Every build keeps those that its own density's shell blocks keep,
// with screening.kept_quartets' test (float32: dm *= q_cd, dm *= q_ab,
// dm >= tol, dm the largest |D| of the blocks the quartet reads: ab, cd for J
// and ac, ad, bc, bd for K), in two passes over a piece of the plan:
// fr_plan_count counts the kept rows of each thread block's tile, and after
// an exclusive scan of those counts (the caller's) fr_plan_compact writes
// them, in the plan's order, as int32 quartets for the kernels.  A guess
// density keeps a few per cent of a large plan: this reads the plan once per
// pass and writes only what is kept.
//
// Each thread block takes a tile of FR_PLAN_ROUNDS (defined by the caller)
// times blockDim.x consecutive rows (blockDim.x a multiple of 32, at most
// 1024), one row per thread a round.
//
// The block maxima themselves come from fr_shell_block_max, on the device,
// so that a build does not copy its density to the host to screen it.

__device__ __forceinline__ bool fr_plan_keeps(const ushort4 s, const float* __restrict__ q32,
                                              const float* __restrict__ d32, int nbas, float tol,
                                              int with_j, int with_k) {
  const int a = s.x * nbas, b = s.y * nbas;
  float dm = 0.f;
  if (with_j) dm = fmaxf(d32[a + s.y], d32[s.z * nbas + s.w]);
  if (with_k)
    dm = fmaxf(dm, fmaxf(fmaxf(d32[a + s.z], d32[a + s.w]), fmaxf(d32[b + s.z], d32[b + s.w])));
  dm *= q32[s.z * nbas + s.w];
  dm *= q32[a + s.y];
  return (with_j || with_k) && dm >= tol;
}

extern "C" __global__ void fr_plan_count(
    const ushort4* __restrict__ quartets, int n, const float* __restrict__ q32,
    const float* __restrict__ d32, int nbas, float tol, int with_j, int with_k,
    int* __restrict__ tile_counts) {
  const long long base = (long long)blockIdx.x * FR_PLAN_ROUNDS * blockDim.x;
  int count = 0;
  for (int r = 0; r < FR_PLAN_ROUNDS; ++r) {
    const long long i = base + (long long)r * blockDim.x + threadIdx.x;
    const bool keep = i < n && fr_plan_keeps(quartets[i], q32, d32, nbas, tol, with_j, with_k);
    count += __syncthreads_count(keep);
  }
  if (threadIdx.x == 0) tile_counts[blockIdx.x] = count;
}

extern "C" __global__ void fr_plan_compact(
    const ushort4* __restrict__ quartets, int n, const float* __restrict__ q32,
    const float* __restrict__ d32, int nbas, float tol, int with_j, int with_k,
    const long long* __restrict__ tile_starts, int4* __restrict__ kept) {
  __shared__ int warp_counts[32];
  const long long base = (long long)blockIdx.x * FR_PLAN_ROUNDS * blockDim.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  long long out = tile_starts[blockIdx.x];
  for (int r = 0; r < FR_PLAN_ROUNDS; ++r) {
    const long long i = base + (long long)r * blockDim.x + threadIdx.x;
    ushort4 s = make_ushort4(0, 0, 0, 0);
    bool keep = false;
    if (i < n) {
      s = quartets[i];
      keep = fr_plan_keeps(s, q32, d32, nbas, tol, with_j, with_k);
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = __popc(ballot & ((1u << lane) - 1u)), total = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
      const int c = warp_counts[w];
      before += w < warp ? c : 0;
      total += c;
    }
    if (keep) kept[out + before] = make_int4(s.x, s.y, s.z, s.w);
    out += total;
    __syncthreads();    // warp_counts is written again in the next round
  }
}

// block_max[i * nbas + j] = max |dms[s, p, q]| over the sets s and the AOs p
// of shell i, q of shell j (ao_loc: nbas + 1 offsets), one thread a block;
// a NaN is kept, as NumPy's max keeps it.  The caller takes the larger of
// both orientations (screening.shell_density_max).
extern "C" __global__ void fr_shell_block_max(
    const double* __restrict__ dms, int nset, int nao, const int* __restrict__ ao_loc, int nbas,
    double* __restrict__ block_max) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y * blockDim.y + threadIdx.y;
  if (i >= nbas || j >= nbas) return;
  const int p0 = ao_loc[i], p1 = ao_loc[i + 1], q0 = ao_loc[j], q1 = ao_loc[j + 1];
  double m = 0.0;
  for (int s = 0; s < nset; ++s)
    for (int p = p0; p < p1; ++p) {
      const double* row = dms + ((long long)s * nao + p) * nao;
      for (int q = q0; q < q1; ++q) {
        const double v = fabs(row[q]);
        m = (v > m || v != v) ? v : m;
      }
    }
  block_max[(long long)i * nbas + j] = m;
}
