// FlashSchNet continuous-filter convolution, forward and backward, one kernel each.
//
// Forward (edges in destination order, CSR dst_ptr):
//   m[i] = sum_{e: dst(e)=i} h[src(e)] * C(d_e) * f(d_e),
//   f(d) = s2 * (W2 act(s1 * (W1 rbf(d)) + b1)) + b2
// Backward (edges visited in source order, CSR src_ptr / src_order), given gm = dE/dm:
//   grad_h[j] = sum_{e: src(e)=j} gm[dst(e)] * C(d_e) f(d_e)
//   grad_d[e] = sum_c gm[dst,c] h[src,c] (C'(d) f_c + C(d) df_c/dd)
// with df/dd carried forward through the filter network as a tangent
// (drbf = -2 gamma (d - mu) rbf), so both products share every weight load.
//
// Nothing of size [E x F] or [E x NRBF] reaches global memory: a block stages TE
// edges, builds their Gaussians in shared memory, runs the two filter products on
// the tile, multiplies by the gathered rows, and reduces the messages of each atom
// in a fixed order. Each block owns a contiguous range of atoms (balanced by edge
// count with a binary search on the CSR pointer), so every atom's sum is taken
// inside one block: no atomics, and results are bitwise reproducible.
//
// Segment sum (FS_SEGSUM=1, see seg_parts / seg_combine): the CSR is cut into
// parts of PL consecutive edges aligned to multiples of PL in the global CSR
// order (a block starts its first tile at its first edge rounded down to a
// multiple of PL, the edges before it being padding). Each part is summed by
// all NT threads at once (F/2 threads per part, two channels each), edge after
// edge; an atom's sum is then the left-to-right sum of its per-part partial sums.
// That order depends on the CSR only, not on the grid, the tile size or the GPU.
//
// Latency hiding inside a block (a tile is a chain of barrier-separated phases):
// the next tile's edge arrays are copied to shared memory with cp.async while the
// current tile computes (EdgeQueue), the gathered rows are loaded before the
// second product, and the carries of the segment sum are combined by the last
// warps while the first ones stage the next tile.
#include "flashschnet/common.cuh"
#include "flashschnet/tiles.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the CFConv kernels need sm_80 or newer (cp.async, bf16 mma.sync)"
#endif

namespace fs {

#if PREC == 0
#ifndef FWD_TE
#define FWD_TE 64
#endif
#ifndef BWD_TE
#define BWD_TE 32
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 1
#endif
typedef FfmaTile<FWD_TE, 2> FwdTile;
typedef FfmaTile<BWD_TE, 1> BwdTile;
#else
#ifndef FWD_TE
#define FWD_TE 64
#endif
#ifndef BWD_TE
#define BWD_TE 64
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 2
#endif
typedef MmaTile<FWD_TE, 2, 4> FwdTile;
typedef MmaTile<BWD_TE, 2, 4> BwdTile;
#endif

// FS_PIPELINE=1 loads the next tile's edge arrays during the current tile (see
// EdgeQueue); 0 loads them at the start of each tile. Same results either way.
#ifndef FS_PIPELINE
#define FS_PIPELINE 1
#endif
// FS_SEGSUM=1: the parallel segment sum (all threads, parts of PL edges, see
// seg_parts); 0: the previous one (F threads walk the tile's edges one by one,
// reading SEG_CHUNK messages into registers at a time), kept for A/B timing in
// benchmarks/schnet_kernel_breakdown.py. They add in different orders, so their
// results differ in the last bits.
#ifndef FS_SEGSUM
#define FS_SEGSUM 1
#endif
#ifndef SEG_CHUNK
#define SEG_CHUNK (F == 64 ? 8 : 16)
#endif
static_assert(FWD_TE % SEG_CHUNK == 0 && BWD_TE % SEG_CHUNK == 0, "SEG_CHUNK must divide the tiles");

// FS_PROFILE=1 (benchmarks/schnet_kernel_breakdown.py only): thread 0 of each block
// adds the clock cycles of each phase of the tile loop, barrier to barrier, into
// shared memory, and writes them per block to fs_profile at the end; the kernel
// cfconv_profile_read copies them out. Phases: 0 setup (weights, block range),
// 1 stage edges, 2 Gaussians, 3 gemm1 + activation, 4 gemm2, 5 epilogue +
// message tile, 6 segment sum. The last kernel launched overwrites the table.
#ifndef FS_PROFILE
#define FS_PROFILE 0
#endif
constexpr int NPHASE = 7;
#if FS_PROFILE
constexpr int PROFILE_BLOCKS = 4096;
__device__ unsigned long long fs_profile[PROFILE_BLOCKS * NPHASE];
#define FS_MARK(k)                                                   \
  if (tid == 0) {                                                    \
    const unsigned int now = static_cast<unsigned int>(clock());     \
    prof[k] += now - t_mark;                                         \
    t_mark = now;                                                    \
  }
#else
#define FS_MARK(k)
#endif

// Copy 4 bytes global -> shared without passing through registers (sm_80+). The
// "memory" clobber keeps the compiler from moving shared-memory accesses across it.
__device__ __forceinline__ void cp_async4(void* dst_smem, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(static_cast<u32>(__cvta_generic_to_shared(dst_smem))),
               "l"(src)
               : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// The edge arrays of the next tile, in flight while the current one computes
// (FS_PIPELINE=1). cp.async lands them in shared memory, so the prefetch holds no
// registers across the filter products. Thread tid < TE copies and later reads
// only its own slot q[tid], so no barrier is needed: it waits for its copies,
// reads the slot and stores what it read into the staged tile, and only then
// issues the next copies into the same slot (the stores depend on the loads, and
// instructions issue in order, so the copy cannot overtake the read). Position e
// of the sorted CSR is edge order[e] backward, e forward; backward, order[] is
// fetched one tile earlier still, so the dependent loads never wait on it. Outside
// [e_first, e_end) (before the block's first edge, in its first tile, and past its
// last) a padding edge is staged (d = cutoff: C = C' = 0).
template <bool BWD, int TE>
struct EdgeQueue {
  float d[TE];
  int seg[TE], oth[TE], eid[TE], ord[TE];  // ord: backward, order[] one tile ahead of eid

  // Start the copies of position e = (tile start) + tid, whose edge is id.
  __device__ void issue(int e, int id, int e_first, int e_end, const int* __restrict__ order,
                        const float* __restrict__ dist, const int* __restrict__ seg_g,
                        const int* __restrict__ oth_g, float cutoff) {
    const int t = threadIdx.x;
    if (e >= e_first && e < e_end) {
      cp_async4(d + t, dist + id);
      cp_async4(seg + t, seg_g + id);
      cp_async4(oth + t, oth_g + id);
      eid[t] = id;
    } else {
      d[t] = cutoff;
      seg[t] = 0;
      oth[t] = 0;
      eid[t] = 0;
    }
    if (BWD && e + TE < e_end) cp_async4(ord + t, order + e + TE);
  }
  // The edge at position e (one tile after the slot's current edge; e < e_end).
  __device__ int next_id(int e) const { return BWD ? ord[threadIdx.x] : e; }
};

// Parameters copied to shared memory: b1, s1, b2, s2 (F each), mu, gamma (NRBF each).
constexpr int NPARAM = 4 * F + 2 * NRBF;

// The split of the parallel segment sum (FS_SEGSUM=1): thread tid sums channels
// 2q, 2q+1 (q = tid % NPAIR) of the PL edges of part p = tid / NPAIR of the tile;
// a warp covers one part, so its branches on atom ids are uniform. The last NPAIR
// threads of the block carry the running sums from part to part (seg_combine).
template <class T>
struct SegSplit {
  static constexpr int NPAIR = F / 2, NPART = T::NT / NPAIR, PL = T::TE / NPART, MS2 = T::MSG_STRIDE / 2;
  static_assert(T::NT % NPAIR == 0 && NPAIR % 32 == 0 && T::TE % NPART == 0, "parts must tile the block");
  static_assert(PL >= 2 && T::MSG_STRIDE % 2 == 0, "a part keeps two partial sums in its rows, read as float2");
};

__host__ __device__ constexpr int align16(int x) { return (x + 15) & ~15; }
__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }

// Byte offsets of the dynamic shared memory. The message tile aliases the
// activation tiles, which are dead by the time messages are written.
template <class T, bool BWD>
struct Layout {
  static constexpr int ES = sizeof(typename T::elem_t), NA = BWD ? 2 : 1;
  static constexpr int A1B = align16(T::A1_ELEMS * ES), A2B = align16(T::A2_ELEMS * ES);
  static constexpr int W1 = 0;
  static constexpr int W2 = W1 + align16(T::W1_ELEMS * ES);
  static constexpr int PAR = W2 + align16(T::W2_ELEMS * ES);
  static constexpr int AREA = PAR + align16(NPARAM * 4);
  static constexpr int A1 = AREA, DA1 = A1 + A1B, A2 = A1 + NA * A1B, DA2 = A2 + A2B;
  static constexpr int EDGE = AREA + align16(cmax(NA * (A1B + A2B), T::TE * T::MSG_STRIDE * 4));
  static constexpr int RED = EDGE + 6 * T::TE * 4;  // d, C, C', seg, other, edge id
  static constexpr int QUEUE = RED + (BWD ? T::NCG * T::TE * 4 : 0);
  static constexpr int RANGE = QUEUE + (FS_PIPELINE ? align16(sizeof(EdgeQueue<BWD, T::TE>)) : 0);
  // Segment-sum carries (FS_SEGSUM=1): head/tail atom of each part, then per
  // combining thread its open atom (~atom while none is open) and float2 sum.
  static constexpr int SEGC = RANGE + 16;
  static constexpr int SEGR = SEGC + (FS_SEGSUM ? align16(2 * SegSplit<T>::NPART * 4 + SegSplit<T>::NPAIR * 4) : 0);
  static constexpr int PROF = SEGR + (FS_SEGSUM ? SegSplit<T>::NPAIR * 8 : 0);
  static constexpr int TOTAL = PROF + (FS_PROFILE ? NPHASE * 8 : 0);
  static_assert(TOTAL <= 227 * 1024, "tile too large for shared memory");
};

__device__ __forceinline__ void store2(float* __restrict__ out, int atom, int q, float2 v) {
  reinterpret_cast<float2*>(out + (long long)atom * F)[q] = v;
}
__device__ __forceinline__ void add2(float2& a, float2 b) {
  a.x += b.x;
  a.y += b.y;
}

// Parallel segment sum, step 1 (all threads, after the message tile is complete).
// Thread (part p, pair q) sums its channels over the valid edges [jlo, jhi) of
// part p, in edge order, starting from 0 at the part's first edge and at each new
// atom. Atoms that start and end inside the part are complete: their sums are
// written to out here, with zero rows for atoms without edges between them. The
// part's first atom h (its "head", which may have edges in earlier parts) and last
// atom t (its "tail", which may go on in later parts) are left for seg_combine:
// the head sum goes to message row lo, the tail sum to row lo + 1 (rows only this
// thread reads, and it has read them already), h and t to bnd[2p], bnd[2p + 1]
// (bnd[2p] = -1 for a part with no valid edge).
template <class T>
__device__ __forceinline__ void seg_parts(float* msg, const int* seg_s, int* bnd, float* __restrict__ out, int jb,
                                          int n) {
  typedef SegSplit<T> S;
  constexpr int PL = S::PL;
  const int q = threadIdx.x % S::NPAIR, p = threadIdx.x / S::NPAIR, lo = p * PL;
  const int jlo = max(lo, jb), jhi = min(lo + PL, n);
  if (jlo >= jhi) {
    if (q == 0) bnd[2 * p] = -1;
    return;
  }
  float2* m2 = reinterpret_cast<float2*>(msg) + lo * S::MS2 + q;
  float2 m[PL];
#pragma unroll
  for (int j = 0; j < PL; ++j) m[j] = m2[j * S::MS2];
  const int h = seg_s[jlo], t = seg_s[jhi - 1];
  float2 head = make_float2(0.0f, 0.0f), run = head;
  if (h == t) {  // the usual case: the whole part belongs to one atom
#pragma unroll
    for (int j = 0; j < PL; ++j)
      if (lo + j >= jlo && lo + j < jhi) add2(run, m[j]);
    head = run;
  } else {
    int c = h;
#pragma unroll
    for (int j = 0; j < PL; ++j) {
      if (lo + j >= jlo && lo + j < jhi) {
        const int a = seg_s[lo + j];
        if (a != c) {  // atom c ends at edge j
          if (c == h) head = run; else store2(out, c, q, run);
          for (int x = c + 1; x < a; ++x) store2(out, x, q, make_float2(0.0f, 0.0f));
          c = a;
          run = make_float2(0.0f, 0.0f);
        }
        add2(run, m[j]);
      }
    }
  }
  m2[0] = head;
  m2[S::MS2] = run;  // the tail's sum (unused when h == t)
  if (q == 0) {
    bnd[2 * p] = h;
    bnd[2 * p + 1] = t;
  }
}

// Parallel segment sum, step 2 (the last NPAIR threads, for pair q of channels),
// run while the first warps stage the next tile (the message rows and bnd it reads
// are not overwritten before the next tile's Gaussians), and once after the last
// tile. It walks the parts in order with the block's open atom c and its running
// sum (kept in shared memory, cur_s / run_s, so no register is held across the
// filter products): a part whose head is c adds its head sum; a part with a new
// head first completes c (writes it) and writes zero rows up to the head; a part
// whose tail differs from its head completes the head and opens the tail with the
// tail sum. cur_s[q] = ~c (negative) until the block's first edge. With last, the
// open atom and the atoms without edges after it up to a_end are written too.
template <class T>
__device__ __forceinline__ void seg_combine(const float* msg, const int* bnd, int* cur_s, float2* run_s,
                                            float* __restrict__ out, bool last, int a_end) {
  typedef SegSplit<T> S;
  const int q = threadIdx.x - (T::NT - S::NPAIR);
  if (q < 0) return;
  int c = cur_s[q];
  bool open = c >= 0;
  if (!open) c = ~c;
  float2 run = run_s[q];  // 0 while not open
  const float2* m2 = reinterpret_cast<const float2*>(msg) + q;
#pragma unroll
  for (int p = 0; p < S::NPART; ++p) {
    const int h = bnd[2 * p], t = bnd[2 * p + 1];
    if (h >= 0) {
      const float2 head = m2[p * S::PL * S::MS2];
      if (open && c == h) {
        add2(run, head);
      } else {
        for (; c < h; ++c) {
          store2(out, c, q, run);
          run = make_float2(0.0f, 0.0f);
        }
        run = head;
        open = true;
      }
      if (t != h) {
        store2(out, c, q, run);
        c = t;
        run = m2[(p * S::PL + 1) * S::MS2];
      }
    }
  }
  if (last) {
    for (; c < a_end; ++c) {
      store2(out, c, q, run);
      run = make_float2(0.0f, 0.0f);
    }
  } else {
    cur_s[q] = open ? c : ~c;
    run_s[q] = run;
  }
}

template <class T, bool BWD>
__device__ __forceinline__ void cfconv_body(const float* __restrict__ h, const float* __restrict__ gm,
                                            const float* __restrict__ dist, const int* __restrict__ ptr,
                                            const int* __restrict__ order, const int* __restrict__ seg,
                                            const int* __restrict__ other, const void* __restrict__ w1,
                                            const void* __restrict__ w2, const float* __restrict__ params,
                                            float cutoff, int n_atoms, float* __restrict__ out,
                                            float* __restrict__ grad_d) {
  typedef typename T::elem_t E;
  typedef Layout<T, BWD> L;
  constexpr int TE = T::TE, NR = T::NR, NC = T::NC;
  static_assert(F <= T::NT && TE <= T::NT, "one thread per channel and per edge is assumed");
  extern __shared__ __align__(16) unsigned char smem[];
  E* W1s = reinterpret_cast<E*>(smem + L::W1);
  E* W2s = reinterpret_cast<E*>(smem + L::W2);
  float* par = reinterpret_cast<float*>(smem + L::PAR);
  const float *b1 = par, *s1 = par + F, *b2 = par + 2 * F, *s2 = par + 3 * F;
  const float *mu = par + 4 * F, *gam = par + 4 * F + NRBF;
  E* A1 = reinterpret_cast<E*>(smem + L::A1);
  E* dA1 = reinterpret_cast<E*>(smem + L::DA1);
  E* A2 = reinterpret_cast<E*>(smem + L::A2);
  E* dA2 = reinterpret_cast<E*>(smem + L::DA2);
  float* msg = reinterpret_cast<float*>(smem + L::AREA);
  float* d_s = reinterpret_cast<float*>(smem + L::EDGE);
  float* c_s = d_s + TE;
  float* cp_s = c_s + TE;
  int* seg_s = reinterpret_cast<int*>(cp_s + TE);
  int* oth_s = seg_s + TE;
  int* eid_s = oth_s + TE;
  float* red = reinterpret_cast<float*>(smem + L::RED);
  int* range = reinterpret_cast<int*>(smem + L::RANGE);
  typedef SegSplit<T> S;
  int* bnd = reinterpret_cast<int*>(smem + L::SEGC);  // [2 * NPART] head, tail atom per part
  int* cur_s = bnd + 2 * S::NPART;                     // [NPAIR]
  float2* run_s = reinterpret_cast<float2*>(smem + L::SEGR);  // [NPAIR]

  const int tid = threadIdx.x;
#if FS_PROFILE
  unsigned long long* prof = reinterpret_cast<unsigned long long*>(smem + L::PROF);
  unsigned int t_mark = static_cast<unsigned int>(clock());
  if (tid < NPHASE) prof[tid] = 0;
#endif
  // The two ends of the block's atom range: two binary searches of ~15 dependent
  // loads each, run by two warps side by side while the others load the weights.
  if (tid == 0 || tid == 32) {
    const long long n_edges = ptr[n_atoms];
    const int b = blockIdx.x + (tid == 32);
    range[tid == 32] = b == (int)gridDim.x ? n_atoms : lower_bound(ptr, n_atoms, n_edges * b / gridDim.x);
  }
  T::load_weights(W1s, W2s, static_cast<const E*>(w1), static_cast<const E*>(w2));
  for (int i = tid; i < NPARAM; i += T::NT) par[i] = params[i];
#if FS_SEGSUM
  if (tid < S::NPART) bnd[2 * tid] = -1;  // no parts pending
#endif
  __syncthreads();
  FS_MARK(0);

  const T tile;
  const int a_end = range[1];
  int e_first = ptr[range[0]], e_end = ptr[a_end];
  // Tiles start at the block's first edge rounded down to a multiple of the part
  // length (FS_SEGSUM=1), so parts are aligned in the global CSR order; the jb
  // edges of the first tile before e_first are padding. e_first and e_end are read
  // back from shared memory (range[2], range[3]) where needed after a barrier
  // rather than held in registers across the filter products.
  const int e_start = e_first < e_end ? (FS_SEGSUM ? e_first & ~(S::PL - 1) : e_first) : e_end;
  if (tid == 0) {  // read after the first tile's barriers
    range[2] = e_first;
    range[3] = e_end;
  }
#if FS_SEGSUM
  if (tid >= T::NT - S::NPAIR) {  // the combining threads' state (each reads only its own)
    cur_s[tid - (T::NT - S::NPAIR)] = ~range[0];
    run_s[tid - (T::NT - S::NPAIR)] = make_float2(0.0f, 0.0f);
  }
#else
  int cur = range[0];  // the atom whose sum thread tid < F is accumulating
  float run = 0.0f;
#endif
#if FS_PIPELINE
  EdgeQueue<BWD, TE>& queue = *reinterpret_cast<EdgeQueue<BWD, TE>*>(smem + L::QUEUE);
  if (tid < TE) {
    const int e = e_start + tid;
    queue.issue(e, BWD ? (e >= e_first && e < e_end ? order[e] : 0) : e, e_first, e_end, order, dist, seg, other,
                cutoff);
  }
#endif
  for (int e0 = e_start; e0 < e_end; e0 += TE) {
    int n = min(TE, e_end - e0), jb = max(e_first - e0, 0);  // valid edges: [jb, n)
    if (tid < TE) {
#if FS_PIPELINE
      cp_async_wait_all();
      const int eid = queue.eid[tid];
      const float d = queue.d[tid];
      seg_s[tid] = queue.seg[tid];
      oth_s[tid] = queue.oth[tid];
#else
      const bool valid = tid >= jb && tid < n;
      const int eid = valid ? (BWD ? order[e0 + tid] : e0 + tid) : 0;
      const float d = valid ? dist[eid] : cutoff;
      seg_s[tid] = valid ? seg[eid] : 0;
      oth_s[tid] = valid ? other[eid] : 0;
#endif
      if (BWD) {
        // The h[src] row of the backward epilogue (a tile has mostly one or two
        // source atoms) goes to L1 now, so its L2 latency hides behind the products.
        const float* row = h + (long long)seg_s[tid] * F;
#pragma unroll
        for (int c = 0; c < F; c += 32) prefetch_l1(row + c);
      }
      float cp;
      c_s[tid] = envelope(d, cutoff, cp);
      cp_s[tid] = cp;
      d_s[tid] = d;
      eid_s[tid] = eid;
#if FS_PIPELINE
      const int e = e0 + TE + tid;
      queue.issue(e, e < e_end ? queue.next_id(e) : 0, e_first, e_end, order, dist, seg, other, cutoff);
#endif
    }
#if FS_SEGSUM
    seg_combine<T>(msg, bnd, cur_s, run_s, out, false, 0);  // the previous tile's parts
#endif
    __syncthreads();
    FS_MARK(1);
    T::template fill_a1<BWD>(A1, dA1, d_s, mu, gam);
    __syncthreads();
    FS_MARK(2);

    float acc[NR][NC], dacc[NR][NC];
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int c = 0; c < NC; ++c) acc[r][c] = dacc[r][c] = 0.0f;
    tile.template gemm1<BWD>(acc, dacc, A1, dA1, W1s);
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int ch = tile.col(c);
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        float slope;
        acc[r][c] = act_and_slope(fmaf(s1[ch], acc[r][c], b1[ch]), slope);
        if (BWD) dacc[r][c] *= slope * s1[ch];
      }
    }
    tile.store_act(A2, acc);
    if (BWD) tile.store_act(dA2, dacc);
    __syncthreads();
    FS_MARK(3);

    // The gathered rows (h[src] forward, gm[dst] backward) are loaded now so that
    // their latency hides behind the second product.
    float rows[NR][NC];
#pragma unroll
    for (int r = 0; r < NR; ++r) tile.load_row(rows[r], BWD ? gm : h, oth_s, r);
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int c = 0; c < NC; ++c) acc[r][c] = dacc[r][c] = 0.0f;
    tile.template gemm2<BWD>(acc, dacc, A2, dA2, W2s);
    __syncthreads();  // the message tile overwrites the activation tiles
    FS_MARK(4);

    if (!BWD) {
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        const float ce = c_s[tile.row(r)];
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          const int ch = tile.col(c);
          acc[r][c] = ce * fmaf(s2[ch], acc[r][c], b2[ch]) * rows[r][c];
        }
      }
      tile.store_msg(msg, acc);
    } else {
      float part[NR];
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        float hv[NC];
        tile.load_row(hv, h, seg_s, r);
        const int e = tile.row(r);
        const float ce = c_s[e], cpe = cp_s[e];
        float p = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          const int ch = tile.col(c);
          const float f = fmaf(s2[ch], acc[r][c], b2[ch]);
          const float df = s2[ch] * dacc[r][c];
          p = fmaf(rows[r][c] * hv[c], fmaf(cpe, f, ce * df), p);
          acc[r][c] = ce * f * rows[r][c];
        }
        part[r] = p;
      }
      tile.store_msg(msg, acc);
      tile.reduce_rows(part, red);
    }
    __syncthreads();
    FS_MARK(5);

    n = min(TE, range[3] - e0);
    jb = max(range[2] - e0, 0);
    if (BWD && tid >= jb && tid < n) {
      float s = 0.0f;
#pragma unroll
      for (int g = 0; g < T::NCG; ++g) s += red[g * TE + tid];
      grad_d[eid_s[tid]] = s;
    }
#if FS_SEGSUM
    seg_parts<T>(msg, seg_s, bnd, out, jb, n);
#else
    // Segment sums in CSR order: thread tid owns channel tid of the current atom.
    // The messages and atom ids are read SEG_CHUNK at a time into registers first,
    // so the shared-memory latency is paid once per chunk, not once per edge (the
    // sum itself stays one add per edge in edge order).
    if (tid < F) {
      for (int c0 = 0; c0 < n; c0 += SEG_CHUNK) {
        float m[SEG_CHUNK];
        int a[SEG_CHUNK];
#pragma unroll
        for (int j = 0; j < SEG_CHUNK; ++j) {
          m[j] = msg[(c0 + j) * T::MSG_STRIDE + tid];
          a[j] = seg_s[c0 + j];
        }
#pragma unroll
        for (int j = 0; j < SEG_CHUNK; ++j) {
          if (c0 + j >= jb && c0 + j < n) {
            while (cur < a[j]) {
              out[(long long)cur * F + tid] = run;
              run = 0.0f;
              ++cur;
            }
            run += m[j];
          }
        }
      }
    }
#endif
    __syncthreads();  // the next tile overwrites the staged edges and the messages
    FS_MARK(6);
    e_end = range[3];
    e_first = range[2];
  }
#if FS_SEGSUM
  seg_combine<T>(msg, bnd, cur_s, run_s, out, true, range[1]);
#else
  if (tid < F) {
    for (; cur < a_end; ++cur) {
      out[(long long)cur * F + tid] = run;
      run = 0.0f;
    }
  }
#endif
#if FS_PROFILE
  __syncthreads();  // thread 0's last update of prof
  if (tid < NPHASE && blockIdx.x < PROFILE_BLOCKS) fs_profile[blockIdx.x * NPHASE + tid] = prof[tid];
#endif
}

}  // namespace fs

// out[i] = sum over edges e with dst(e) = i of h[src(e)] * C(d_e) f(d_e).
extern "C" __global__ void __launch_bounds__(fs::FwdTile::NT, MIN_BLOCKS)
    cfconv_forward(const float* __restrict__ h, const float* __restrict__ dist, const int* __restrict__ dst_ptr,
                   const int* __restrict__ dst, const int* __restrict__ src, const void* __restrict__ w1,
                   const void* __restrict__ w2, const float* __restrict__ params, float cutoff, int n_atoms,
                   float* __restrict__ out) {
  fs::cfconv_body<fs::FwdTile, false>(h, nullptr, dist, dst_ptr, nullptr, dst, src, w1, w2, params, cutoff,
                                      n_atoms, out, nullptr);
}

// grad_h[j] = sum over edges e with src(e) = j of gm[dst(e)] * C(d_e) f(d_e); grad_d[e] = dE/dd_e.
extern "C" __global__ void __launch_bounds__(fs::BwdTile::NT, MIN_BLOCKS)
    cfconv_backward(const float* __restrict__ h, const float* __restrict__ gm, const float* __restrict__ dist,
                    const int* __restrict__ src_ptr, const int* __restrict__ src_order,
                    const int* __restrict__ src, const int* __restrict__ dst, const void* __restrict__ w1,
                    const void* __restrict__ w2, const float* __restrict__ params, float cutoff, int n_atoms,
                    float* __restrict__ grad_h, float* __restrict__ grad_d) {
  fs::cfconv_body<fs::BwdTile, true>(h, gm, dist, src_ptr, src_order, src, dst, w1, w2, params, cutoff, n_atoms,
                                     grad_h, grad_d);
}

#if FS_PROFILE
// out[b * NPHASE + k]: cycles of phase k in block b of the last CFConv launch (b < n_blocks).
extern "C" __global__ void cfconv_profile_read(unsigned long long* out, int n_blocks) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < min(n_blocks, fs::PROFILE_BLOCKS) * fs::NPHASE;
       i += gridDim.x * blockDim.x)
    out[i] = fs::fs_profile[i];
}
#endif

// Launch geometry for the host: {forward smem bytes, threads, backward smem bytes, threads}.
extern "C" __global__ void cfconv_config(int* out) {
  out[0] = fs::Layout<fs::FwdTile, false>::TOTAL;
  out[1] = fs::FwdTile::NT;
  out[2] = fs::Layout<fs::BwdTile, true>::TOTAL;
  out[3] = fs::BwdTile::NT;
}
