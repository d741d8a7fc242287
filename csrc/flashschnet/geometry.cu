// Edge geometry of FlashSchNet: distances once per force call, and the
// deterministic reductions that turn per-edge dE/dd into forces, virials and
// per-system sums. Every reduction is a CSR segment sum in a fixed order (one
// warp per segment, lane-strided partial sums, then a fixed butterfly), so
// results are bitwise reproducible; nothing uses atomics.
//
// Conventions (ase_flashschnet/neighbors.py): vec_e = pos[src] - pos[dst] + shift_e,
// d_e = |vec_e|, edges sorted by destination (dst_ptr), src_order / src_ptr the
// permutation and CSR by source.

__device__ __forceinline__ float3 edge_vector(const float* __restrict__ pos, const float* __restrict__ shifts,
                                              int s, int t, int e) {
  return make_float3(pos[3 * s] - pos[3 * t] + shifts[3 * e], pos[3 * s + 1] - pos[3 * t + 1] + shifts[3 * e + 1],
                     pos[3 * s + 2] - pos[3 * t + 2] + shifts[3 * e + 2]);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// d[e] = |pos[src] - pos[dst] + shift| for every edge.
extern "C" __global__ void edge_lengths(const float* __restrict__ pos, const float* __restrict__ shifts,
                                        const int* __restrict__ src, const int* __restrict__ dst, int n_edges,
                                        float* __restrict__ d) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n_edges) return;
  const float3 v = edge_vector(pos, shifts, src[e], dst[e], e);
  d[e] = sqrtf(v.x * v.x + v.y * v.y + v.z * v.z);
}

// forces[a] = -dE/dpos_a from g[e] = dE/dd_e: each atom sums its edges as destination
// (dd/dpos_dst = -vec/d) and as source (dd/dpos_src = +vec/d). With virial != 0,
// also virial[a] = -sum over its destination edges of g vec vec^T / d (3 x 3, row
// major): the -dE/d(strain) share of the edges ending at a. One warp per atom.
extern "C" __global__ void edge_forces(const float* __restrict__ g, const float* __restrict__ pos,
                                       const float* __restrict__ shifts, const int* __restrict__ src,
                                       const int* __restrict__ dst, const int* __restrict__ dst_ptr,
                                       const int* __restrict__ src_order, const int* __restrict__ src_ptr,
                                       int n_atoms, int virial, float* __restrict__ forces,
                                       float* __restrict__ virials) {
  const int a = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (a >= n_atoms) return;
  float gx = 0.0f, gy = 0.0f, gz = 0.0f;
  float w[6] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};  // xx yy zz yz xz xy
  for (int e = dst_ptr[a] + lane; e < dst_ptr[a + 1]; e += 32) {
    const float3 v = edge_vector(pos, shifts, src[e], a, e);
    const float d = sqrtf(v.x * v.x + v.y * v.y + v.z * v.z);
    const float s = d > 0.0f ? g[e] / d : 0.0f;
    gx -= s * v.x;
    gy -= s * v.y;
    gz -= s * v.z;
    if (virial) {
      w[0] += s * v.x * v.x;
      w[1] += s * v.y * v.y;
      w[2] += s * v.z * v.z;
      w[3] += s * v.y * v.z;
      w[4] += s * v.x * v.z;
      w[5] += s * v.x * v.y;
    }
  }
  for (int p = src_ptr[a] + lane; p < src_ptr[a + 1]; p += 32) {
    const int e = src_order[p];
    const float3 v = edge_vector(pos, shifts, a, dst[e], e);
    const float d = sqrtf(v.x * v.x + v.y * v.y + v.z * v.z);
    const float s = d > 0.0f ? g[e] / d : 0.0f;
    gx += s * v.x;
    gy += s * v.y;
    gz += s * v.z;
  }
  gx = warp_sum(gx);
  gy = warp_sum(gy);
  gz = warp_sum(gz);
  if (lane == 0) {
    forces[3 * a] = -gx;
    forces[3 * a + 1] = -gy;
    forces[3 * a + 2] = -gz;
  }
  if (virial) {
#pragma unroll
    for (int k = 0; k < 6; ++k) w[k] = warp_sum(w[k]);
    if (lane == 0) {
      float* o = virials + 9 * a;
      o[0] = -w[0]; o[1] = -w[5]; o[2] = -w[4];
      o[3] = -w[5]; o[4] = -w[1]; o[5] = -w[3];
      o[6] = -w[4]; o[7] = -w[3]; o[8] = -w[2];
    }
  }
}

// out[s][c] = sum over p in [ptr[s], ptr[s+1]) of values[order[p]][c], for c < n_cols.
// One warp per segment.
extern "C" __global__ void segment_sum(const float* __restrict__ values, const int* __restrict__ order,
                                       const int* __restrict__ ptr, int n_segments, int n_cols,
                                       float* __restrict__ out) {
  const int s = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (s >= n_segments) return;
  for (int c = 0; c < n_cols; ++c) {
    float v = 0.0f;
    for (int p = ptr[s] + lane; p < ptr[s + 1]; p += 32) v += values[(long long)order[p] * n_cols + c];
    v = warp_sum(v);
    if (lane == 0) out[(long long)s * n_cols + c] = v;
  }
}

// ---------------------------------------------------------------------------
// Fixed-capacity neighbour lists for batched MD (ase_flashschnet/neighbors.py,
// StaticNeighborList). Systems are contiguous blocks of atoms (sys_ptr); each
// system has its own cell, pbc and list of lattice translations (img_ptr, img,
// lexicographically sorted). The output layout is the one build_torch/_finalize
// give, followed by padding:
//   edges [0, E): sorted by (dst, src, cell_shift); dst_ptr == src_ptr (full
//   lists are symmetric by construction, see `within`), src_order the stable
//   argsort of src over [0, E);
//   edges [E, capacity): padding, src = dst = (e - E) % n_atoms, cartesian shift
//   (pad, 0, 0) with pad beyond the cutoff (zero weight), src_order[e] = e.
// Consumers that follow the CSR pointers never see the padding; plain torch
// consumers see edges of zero weight.
//
// Every kernel reads a device flag first and returns at once when it is zero, so
// the whole rebuild can sit inside a captured CUDA graph and run only on the
// steps where the MD step found that some atom moved more than skin / 2:
//   nbr_wrap   (gate)   wrap positions into the cell, per atom
//   nbr_count  (gate)   neighbours per destination atom, one warp per atom
//   nbr_scan   (gate)   exclusive scan -> row pointers; commit = E <= capacity;
//                       build statistics (and the first overflowing step) in stat
//   nbr_fill   (commit) edges of each row in order, row pointers, x_ref = pos
//   nbr_finish (commit) src_order by mirror edges, padding
// On overflow nothing of the old list is touched (the caller rolls back, grows
// the buffers and builds again). All integer outputs are deterministic.

#define NBR_STAT_BUILDS 0
#define NBR_STAT_TOTAL 1
#define NBR_STAT_MAX_TOTAL 2
#define NBR_STAT_OVERFLOW 3
#define NBR_STAT_ERROR 4
#define NBR_STAT_STEP 5

namespace nbr {

__device__ __forceinline__ bool lex_negative(const int* im) {
  return im[0] < 0 || (im[0] == 0 && (im[1] < 0 || (im[1] == 0 && im[2] < 0)));
}

// Translation img @ cell (rows of cell are the lattice vectors). For -img the
// result is the exact negation (same operations on negated operands).
template <typename T>
__device__ __forceinline__ void translation(const T* __restrict__ cell, const int* __restrict__ im, T t[3]) {
#pragma unroll
  for (int c = 0; c < 3; ++c) t[c] = (T)im[0] * cell[c] + (T)im[1] * cell[3 + c] + (T)im[2] * cell[6 + c];
}

// Whether edge (dst i, src j, translation t of image im) is shorter than sqrt(r2).
// The distance is always computed from the same side of the pair (the smaller
// atom index as destination; for an atom and its own image, the lexicographically
// positive image), so an edge and its mirror (j, i, -im) get bitwise the same
// distance: the list is exactly symmetric, which nbr_finish relies on.
template <typename T>
__device__ __forceinline__ bool within(const T* __restrict__ pw, int i, int j, const int* __restrict__ im,
                                       const T t[3], T r2) {
  bool flip;
  if (i == j) {
    if (im[0] == 0 && im[1] == 0 && im[2] == 0) return false;
    flip = lex_negative(im);
  } else {
    flip = i > j;
  }
  const int a = flip ? i : j;
  const int b = flip ? j : i;
  T d[3];
#pragma unroll
  for (int c = 0; c < 3; ++c) d[c] = (flip ? pw[3 * a + c] - t[c] : pw[3 * a + c] + t[c]) - pw[3 * b + c];
  return d[0] * d[0] + d[1] * d[1] + d[2] * d[2] < r2;
}

__device__ __forceinline__ float floor_of(float x) { return floorf(x); }
__device__ __forceinline__ double floor_of(double x) { return floor(x); }

__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ void wrap_impl(const T* __restrict__ pos, const int* __restrict__ atom_sys, const T* __restrict__ cell,
                          const T* __restrict__ inv, const int* __restrict__ pbc, int n_atoms,
                          const int* __restrict__ gate, T* __restrict__ pw, int* __restrict__ wrap) {
  if (!gate[0]) return;
  const int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= n_atoms) return;
  const int s = atom_sys[a];
  const T* cs = cell + 9 * s;
  const T* is = inv + 9 * s;
  int w[3];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const T frac = pos[3 * a] * is[k] + pos[3 * a + 1] * is[3 + k] + pos[3 * a + 2] * is[6 + k];
    w[k] = pbc[3 * s + k] ? (int)floor_of(frac) : 0;
  }
#pragma unroll
  for (int c = 0; c < 3; ++c) {
    pw[3 * a + c] = pos[3 * a + c] - ((T)w[0] * cs[c] + (T)w[1] * cs[3 + c] + (T)w[2] * cs[6 + c]);
    wrap[3 * a + c] = w[c];
  }
}

template <typename T>
__device__ void count_impl(const T* __restrict__ pw, const int* __restrict__ atom_sys, const int* __restrict__ sys_ptr,
                           const T* __restrict__ cell, const int* __restrict__ img_ptr, const int* __restrict__ img,
                           int n_atoms, T r2, const int* __restrict__ gate, int* __restrict__ deg) {
  if (!gate[0]) return;
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (i >= n_atoms) return;
  const int s = atom_sys[i];
  const int a0 = sys_ptr[s], a1 = sys_ptr[s + 1], k0 = img_ptr[s], k1 = img_ptr[s + 1];
  const T* cs = cell + 9 * s;
  int cnt = 0;
  for (int j = a0 + lane; j < a1; j += 32) {
    for (int k = k0; k < k1; ++k) {
      T t[3];
      translation(cs, img + 3 * k, t);
      cnt += within(pw, i, j, img + 3 * k, t, r2);
    }
  }
  cnt = warp_sum_int(cnt);
  if (lane == 0) deg[i] = cnt;
}

template <typename T, typename I>
__device__ void fill_impl(const T* __restrict__ pw, const int* __restrict__ wrap, const int* __restrict__ atom_sys,
                          const int* __restrict__ sys_ptr, const T* __restrict__ cell,
                          const int* __restrict__ img_ptr, const int* __restrict__ img, int n_atoms, T r2,
                          const int* __restrict__ commit, const int* __restrict__ ptr, const T* pos, T* x_ref,
                          I* __restrict__ src, I* __restrict__ dst, T* __restrict__ shifts,
                          I* __restrict__ cell_shifts, I* __restrict__ dst_ptr, I* __restrict__ src_ptr) {
  if (!commit[0]) return;
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (i >= n_atoms) return;
  const int s = atom_sys[i];
  const int a0 = sys_ptr[s], a1 = sys_ptr[s + 1], k0 = img_ptr[s], k1 = img_ptr[s + 1];
  const T* cs = cell + 9 * s;
  long long base = ptr[i];
  for (int j0 = a0; j0 < a1; j0 += 32) {  // uniform trip count: every lane takes part in the scans
    const int j = j0 + lane;
    int c = 0;
    if (j < a1) {
      for (int k = k0; k < k1; ++k) {
        T t[3];
        translation(cs, img + 3 * k, t);
        c += within(pw, i, j, img + 3 * k, t, r2);
      }
    }
    int incl = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    long long e = base + incl - c;
    if (c) {
      for (int k = k0; k < k1; ++k) {
        const int* im = img + 3 * k;
        T t[3];
        translation(cs, im, t);
        if (!within(pw, i, j, im, t, r2)) continue;
        int sh[3];
#pragma unroll
        for (int q = 0; q < 3; ++q) sh[q] = im[q] - wrap[3 * j + q] + wrap[3 * i + q];
        src[e] = (I)j;
        dst[e] = (I)i;
#pragma unroll
        for (int q = 0; q < 3; ++q) {
          cell_shifts[3 * e + q] = (I)sh[q];
          shifts[3 * e + q] = (T)sh[0] * cs[q] + (T)sh[1] * cs[3 + q] + (T)sh[2] * cs[6 + q];
        }
        ++e;
      }
    }
    base += __shfl_sync(0xffffffffu, incl, 31);
  }
  if (lane == 0) {
    dst_ptr[i] = src_ptr[i] = (I)ptr[i];
    if (i == n_atoms - 1) dst_ptr[n_atoms] = src_ptr[n_atoms] = (I)ptr[n_atoms];
  }
  if (lane < 3 && x_ref != pos) x_ref[3 * i + lane] = pos[3 * i + lane];
}

// First index in [lo, hi) with src >= value (src is sorted there).
template <typename I>
__device__ __forceinline__ int lower_bound_idx(const I* __restrict__ src, int lo, int hi, int value) {
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if ((int)src[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// One thread per edge slot. Edge e = (dst i, src j, shift S) sits in row j of the
// source order at rank (edges of row j with dst < i) + (edges (i, j) with shift < S);
// by symmetry those are the entries of destination row j with src < i, and the
// entries (dst j, src i) with shift > -S, which follow the mirror edge (j, i, -S).
template <typename T, typename I>
__device__ void finish_impl(const int* __restrict__ commit, const int* __restrict__ ptr, int n_atoms,
                            long long capacity, T pad, I* __restrict__ src, I* __restrict__ dst,
                            T* __restrict__ shifts, I* __restrict__ cell_shifts, I* __restrict__ src_order,
                            long long* __restrict__ stat) {
  if (!commit[0]) return;
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= capacity) return;
  const long long n_edges = ptr[n_atoms];
  if (e >= n_edges) {
    const I a = (I)((e - n_edges) % n_atoms);
    src[e] = a;
    dst[e] = a;
    shifts[3 * e] = pad;
    shifts[3 * e + 1] = (T)0;
    shifts[3 * e + 2] = (T)0;
    cell_shifts[3 * e] = cell_shifts[3 * e + 1] = cell_shifts[3 * e + 2] = (I)0;
    src_order[e] = (I)e;
    return;
  }
  const int i = (int)dst[e], j = (int)src[e];
  const int lo = ptr[j], hi = ptr[j + 1];
  const int g0 = lower_bound_idx(src, lo, hi, i);
  const int g1 = lower_bound_idx(src, g0, hi, i + 1);
  const I s0 = cell_shifts[3 * e], s1 = cell_shifts[3 * e + 1], s2 = cell_shifts[3 * e + 2];
  int r = -1;
  for (int q = g0; q < g1; ++q) {
    if (cell_shifts[3 * (long long)q] == -s0 && cell_shifts[3 * (long long)q + 1] == -s1 &&
        cell_shifts[3 * (long long)q + 2] == -s2) {
      r = q;
      break;
    }
  }
  if (r < 0) {  // cannot happen for a symmetric list; reported, never written out of place
    stat[NBR_STAT_ERROR] = 1;
    return;
  }
  src_order[lo + (g0 - lo) + (g1 - 1 - r)] = (I)e;
}

}  // namespace nbr

// Exclusive scan of deg into ptr (n_atoms + 1 entries), one block of up to 1024
// threads. commit = gate && total <= capacity. stat: builds (committed), total
// and largest total (attempted), first overflowing step (stat[STEP] at the time).
extern "C" __global__ void nbr_scan(const int* __restrict__ deg, int n_atoms, long long capacity,
                                    const int* __restrict__ gate, int* __restrict__ ptr, int* __restrict__ commit,
                                    long long* __restrict__ stat) {
  __shared__ long long part[1024];
  const int tid = threadIdx.x, nt = blockDim.x;
  if (!gate[0]) {
    if (tid == 0) commit[0] = 0;
    return;
  }
  const int chunk = (n_atoms + nt - 1) / nt;
  const int b = min(tid * chunk, n_atoms), e = min(b + chunk, n_atoms);
  long long sum = 0;
  for (int i = b; i < e; ++i) sum += deg[i];
  part[tid] = sum;
  __syncthreads();
  for (int off = 1; off < nt; off <<= 1) {
    const long long v = tid >= off ? part[tid - off] : 0;
    __syncthreads();
    part[tid] += v;
    __syncthreads();
  }
  const long long total = part[nt - 1];
  const bool ok = total <= capacity;
  if (ok) {
    long long run = part[tid] - sum;
    for (int i = b; i < e; ++i) {
      ptr[i] = (int)run;
      run += deg[i];
    }
  }
  if (tid == 0) {
    commit[0] = ok ? 1 : 0;
    if (ok) ptr[n_atoms] = (int)total;
    stat[NBR_STAT_TOTAL] = total;
    if (total > stat[NBR_STAT_MAX_TOTAL]) stat[NBR_STAT_MAX_TOTAL] = total;
    if (ok) stat[NBR_STAT_BUILDS] += 1;
    else if (stat[NBR_STAT_OVERFLOW] < 0) stat[NBR_STAT_OVERFLOW] = stat[NBR_STAT_STEP];
  }
}

#define NBR_T_KERNELS(T, TS)                                                                                       \
  extern "C" __global__ void nbr_wrap_##TS(const T* pos, const int* atom_sys, const T* cell, const T* inv,        \
                                           const int* pbc, int n_atoms, const int* gate, T* pw, int* wrap) {     \
    nbr::wrap_impl<T>(pos, atom_sys, cell, inv, pbc, n_atoms, gate, pw, wrap);                                    \
  }                                                                                                                \
  extern "C" __global__ void nbr_count_##TS(const T* pw, const int* atom_sys, const int* sys_ptr, const T* cell,  \
                                            const int* img_ptr, const int* img, int n_atoms, T r2,               \
                                            const int* gate, int* deg) {                                         \
    nbr::count_impl<T>(pw, atom_sys, sys_ptr, cell, img_ptr, img, n_atoms, r2, gate, deg);                        \
  }

#define NBR_TI_KERNELS(T, I, SUF)                                                                                  \
  extern "C" __global__ void nbr_fill_##SUF(const T* pw, const int* wrap, const int* atom_sys, const int* sys_ptr, \
                                            const T* cell, const int* img_ptr, const int* img, int n_atoms, T r2, \
                                            const int* commit, const int* ptr, const T* pos, T* x_ref, I* src,   \
                                            I* dst, T* shifts, I* cell_shifts, I* dst_ptr, I* src_ptr) {         \
    nbr::fill_impl<T, I>(pw, wrap, atom_sys, sys_ptr, cell, img_ptr, img, n_atoms, r2, commit, ptr, pos, x_ref,   \
                         src, dst, shifts, cell_shifts, dst_ptr, src_ptr);                                        \
  }                                                                                                                \
  extern "C" __global__ void nbr_finish_##SUF(const int* commit, const int* ptr, int n_atoms, long long capacity, \
                                              T pad, I* src, I* dst, T* shifts, I* cell_shifts, I* src_order,     \
                                              long long* stat) {                                                 \
    nbr::finish_impl<T, I>(commit, ptr, n_atoms, capacity, pad, src, dst, shifts, cell_shifts, src_order, stat); \
  }

NBR_T_KERNELS(float, f32)
NBR_T_KERNELS(double, f64)
NBR_TI_KERNELS(float, int, f32_i32)
NBR_TI_KERNELS(float, long long, f32_i64)
NBR_TI_KERNELS(double, int, f64_i32)
NBR_TI_KERNELS(double, long long, f64_i64)
