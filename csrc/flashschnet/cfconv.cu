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
// in edge order. Each block owns a contiguous range of atoms (balanced by edge
// count with a binary search on the CSR pointer), so every atom's sum is taken by
// one thread per channel in CSR order: no atomics, and results are bitwise
// reproducible and independent of the grid size.
#include "flashschnet/common.cuh"
#include "flashschnet/tiles.cuh"

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

// Parameters copied to shared memory: b1, s1, b2, s2 (F each), mu, gamma (NRBF each).
constexpr int NPARAM = 4 * F + 2 * NRBF;

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
  static constexpr int RANGE = RED + (BWD ? T::NCG * T::TE * 4 : 0);
  static constexpr int TOTAL = RANGE + 16;
  static_assert(TOTAL <= 227 * 1024, "tile too large for shared memory");
};

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

  const int tid = threadIdx.x;
  if (tid == 0) {
    const long long n_edges = ptr[n_atoms];
    range[0] = lower_bound(ptr, n_atoms, n_edges * blockIdx.x / gridDim.x);
    range[1] = blockIdx.x + 1 == gridDim.x ? n_atoms
                                            : lower_bound(ptr, n_atoms, n_edges * (blockIdx.x + 1) / gridDim.x);
  }
  T::load_weights(W1s, W2s, static_cast<const E*>(w1), static_cast<const E*>(w2));
  for (int i = tid; i < NPARAM; i += T::NT) par[i] = params[i];
  __syncthreads();

  const T tile;
  const int a_end = range[1];
  const int e_end = ptr[a_end];
  int cur = range[0];  // the atom whose sum thread tid < F is accumulating
  float run = 0.0f;
  for (int e0 = ptr[cur]; e0 < e_end; e0 += TE) {
    const int n = min(TE, e_end - e0);
    if (tid < TE) {
      const bool valid = tid < n;
      const int eid = valid ? (BWD ? order[e0 + tid] : e0 + tid) : 0;
      const float d = valid ? dist[eid] : cutoff;
      float cp;
      c_s[tid] = envelope(d, cutoff, cp);
      cp_s[tid] = cp;
      d_s[tid] = d;
      seg_s[tid] = valid ? seg[eid] : 0;
      oth_s[tid] = valid ? other[eid] : 0;
      eid_s[tid] = eid;
    }
    __syncthreads();
    T::template fill_a1<BWD>(A1, dA1, d_s, mu, gam);
    __syncthreads();

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

    if (BWD && tid < n) {
      float s = 0.0f;
#pragma unroll
      for (int g = 0; g < T::NCG; ++g) s += red[g * TE + tid];
      grad_d[eid_s[tid]] = s;
    }
    // Segment sums in CSR order: thread tid owns channel tid of the current atom.
    if (tid < F) {
      for (int e = 0; e < n; ++e) {
        const int a = seg_s[e];
        while (cur < a) {
          out[(long long)cur * F + tid] = run;
          run = 0.0f;
          ++cur;
        }
        run += msg[e * T::MSG_STRIDE + tid];
      }
    }
    __syncthreads();  // the next tile overwrites the staged edges and the messages
  }
  if (tid < F) {
    for (; cur < a_end; ++cur) {
      out[(long long)cur * F + tid] = run;
      run = 0.0f;
    }
  }
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

// Launch geometry for the host: {forward smem bytes, threads, backward smem bytes, threads}.
extern "C" __global__ void cfconv_config(int* out) {
  out[0] = fs::Layout<fs::FwdTile, false>::TOTAL;
  out[1] = fs::FwdTile::NT;
  out[2] = fs::Layout<fs::BwdTile, true>::TOTAL;
  out[3] = fs::BwdTile::NT;
}
