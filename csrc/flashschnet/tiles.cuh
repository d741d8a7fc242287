// The two ways a thread block evaluates the filter network for a tile of TE
// edges: FfmaTile (fp32, FFMA with register tiling) and MmaTile (fp16/bf16
// weights and activations, fp32 accumulation on tensor cores with mma.sync).
//
// Both expose the same interface to the CFConv kernels, so the kernels are
// written once:
//   acc[NR][NC]            accumulators of this thread; element (r, c) is the
//                          filter output of edge row(r) (0..TE-1) and channel col(c)
//   gemm1 / gemm2          acc (+)= A1 * W1^T  /  A2 * W2^T, and with TAN the same
//                          product of the tangent tiles dA1 / dA2 into dacc
//   fill_a1                Gaussians (and their d-derivatives) of the staged edges
//   store_act              write acc as the A2 operand of the next product
//   load_row               out[c] = base[rows[row(r)] * F + col(c)] (a gathered row)
//   store_msg              write acc to the fp32 message tile msg[e * MSG_STRIDE + c]
//   reduce_rows            sum a per-row value over the threads sharing the row;
//                          one partial per column group lands in red[g * TE + row]
#pragma once
#include "flashschnet/common.cuh"

namespace fs {

// ---------------------------------------------------------------------------
// fp32: each thread owns TM=4 edges x 4*NG channels (NG float4 groups GS apart);
// warps are 4 edge-lanes x 8 channel-lanes, so a weight row is read by 8 lanes
// as 128 contiguous bytes and an activation float4 is a broadcast. Each weight
// loaded from shared memory feeds 4 FMAs, each activation 4*NG.
// A tiles are k-major [K][TE] with the 4-edge groups XOR-swizzled by k, so the
// transposing float4 stores of store_act are conflict-free.
template <int TE_, int NG_>
struct FfmaTile {
  typedef float elem_t;
  static constexpr int TE = TE_, NG = NG_, TM = 4, NR = TM, NC = 4 * NG;
  static constexpr int TC = F / NC, TR = TE / TM, NT = TC * TR, GS = F / NG, NCG = TC / 8;
  static constexpr int W1_ELEMS = NRBF * F, W2_ELEMS = F * F;
  static constexpr int A1_ELEMS = NRBF * TE, A2_ELEMS = F * TE, MSG_STRIDE = F;
  static_assert(F % NC == 0 && TC % 8 == 0 && TR % 4 == 0, "tile does not divide F / TE");
  static_assert(TE >= 32 && (TE & (TE - 1)) == 0, "the swizzle needs a power-of-two tile of >= 32 edges");

  int tr, tc, lane;
  __device__ FfmaTile() {
    lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    tc = (warp % (TC / 8)) * 8 + (lane & 7);
    tr = (warp / (TC / 8)) * 4 + (lane >> 3);
  }
  __device__ int row(int r) const { return tr * TM + r; }
  __device__ int col(int c) const { return (c >> 2) * GS + tc * 4 + (c & 3); }
  static __device__ int a_index(int k, int e) {
    return k * TE + ((((e >> 2) ^ (k >> 2)) & 7 | ((e >> 2) & ~7)) << 2) + (e & 3);
  }

  static __device__ void load_weights(float* W1s, float* W2s, const float* __restrict__ w1,
                                      const float* __restrict__ w2) {
    for (int i = threadIdx.x; i < W1_ELEMS / 4; i += NT)
      reinterpret_cast<float4*>(W1s)[i] = __ldg(reinterpret_cast<const float4*>(w1) + i);
    for (int i = threadIdx.x; i < W2_ELEMS / 4; i += NT)
      reinterpret_cast<float4*>(W2s)[i] = __ldg(reinterpret_cast<const float4*>(w2) + i);
  }

  template <bool TAN>
  static __device__ void fill_a1(float* A1, float* dA1, const float* d_s, const float* mu, const float* gam) {
    for (int i = threadIdx.x; i < NRBF * TE; i += NT) {
      const int k = i / TE, e = i % TE;
      const float diff = d_s[e] - mu[k];
      const float g = expf(-gam[k] * diff * diff);
      A1[a_index(k, e)] = g;
      if (TAN) dA1[a_index(k, e)] = -2.0f * gam[k] * diff * g;
    }
  }

  template <int K, bool TAN>
  __device__ void gemm(float (&acc)[NR][NC], float (&dacc)[NR][NC], const float* A, const float* dA,
                       const float* B) const {
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      const int off = k * TE + ((((tr ^ (k >> 2)) & 7) | (tr & ~7)) << 2);
      const float4 a = *reinterpret_cast<const float4*>(A + off);
      float b[NC];
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const float4 v = *reinterpret_cast<const float4*>(B + k * F + g * GS + tc * 4);
        b[4 * g] = v.x; b[4 * g + 1] = v.y; b[4 * g + 2] = v.z; b[4 * g + 3] = v.w;
      }
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        acc[0][c] = fmaf(a.x, b[c], acc[0][c]);
        acc[1][c] = fmaf(a.y, b[c], acc[1][c]);
        acc[2][c] = fmaf(a.z, b[c], acc[2][c]);
        acc[3][c] = fmaf(a.w, b[c], acc[3][c]);
      }
      if (TAN) {
        const float4 da = *reinterpret_cast<const float4*>(dA + off);
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          dacc[0][c] = fmaf(da.x, b[c], dacc[0][c]);
          dacc[1][c] = fmaf(da.y, b[c], dacc[1][c]);
          dacc[2][c] = fmaf(da.z, b[c], dacc[2][c]);
          dacc[3][c] = fmaf(da.w, b[c], dacc[3][c]);
        }
      }
    }
  }
  template <bool TAN>
  __device__ void gemm1(float (&acc)[NR][NC], float (&dacc)[NR][NC], const float* A1, const float* dA1,
                        const float* W1s) const {
    gemm<NRBF, TAN>(acc, dacc, A1, dA1, W1s);
  }
  template <bool TAN>
  __device__ void gemm2(float (&acc)[NR][NC], float (&dacc)[NR][NC], const float* A2, const float* dA2,
                        const float* W2s) const {
    gemm<F, TAN>(acc, dacc, A2, dA2, W2s);
  }

  __device__ void store_act(float* A, const float (&acc)[NR][NC]) const {
#pragma unroll
    for (int c = 0; c < NC; ++c)
      *reinterpret_cast<float4*>(A + a_index(col(c), tr * 4)) = make_float4(acc[0][c], acc[1][c], acc[2][c], acc[3][c]);
  }

  __device__ void load_row(float (&out)[NC], const float* __restrict__ base, const int* rows, int r) const {
    const float* p = base + (long long)rows[row(r)] * F + tc * 4;
#pragma unroll
    for (int g = 0; g < NG; ++g) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(p + g * GS));
      out[4 * g] = v.x; out[4 * g + 1] = v.y; out[4 * g + 2] = v.z; out[4 * g + 3] = v.w;
    }
  }

  __device__ void store_msg(float* msg, const float (&acc)[NR][NC]) const {
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int g = 0; g < NG; ++g)
        *reinterpret_cast<float4*>(msg + row(r) * MSG_STRIDE + g * GS + tc * 4) =
            make_float4(acc[r][4 * g], acc[r][4 * g + 1], acc[r][4 * g + 2], acc[r][4 * g + 3]);
  }

  __device__ void reduce_rows(float (&part)[NR], float* red) const {
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      float v = part[r];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      if ((lane & 7) == 0) red[(tc >> 3) * TE + row(r)] = v;
    }
  }
};

#if PREC != 0
// ---------------------------------------------------------------------------
// 16-bit: mma.sync m16n8k16 with fp32 accumulators. The warps form a WR x WC grid
// over the TE x F output tile; each warp owns MT 16-row by NTL 8-column fragments.
// A tiles are row-major [TE][K + 8] and the weights are kept as nn.Linear stores
// them, [F][K + 8] (the "col" B operand); the 8-element pad puts consecutive rows
// 16 bytes apart in the banks, so ldmatrix is conflict-free. The K of the first
// product is NRBF rounded up to 16 with zero padding.
template <int TE_, int WR_, int WC_>
struct MmaTile {
  typedef u16 elem_t;
  static constexpr int TE = TE_, WR = WR_, WC = WC_, WM = TE / WR, WN = F / WC;
  static constexpr int MT = WM / 16, NTL = WN / 8, NR = 2 * MT, NC = 2 * NTL, NT = 32 * WR * WC, NCG = WC;
  static constexpr int KR = (NRBF + 15) / 16 * 16, LD1 = KR + 8, LD2 = F + 8;
  static constexpr int W1_ELEMS = F * LD1, W2_ELEMS = F * LD2;
  static constexpr int A1_ELEMS = TE * LD1, A2_ELEMS = TE * LD2, MSG_STRIDE = F + 8;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "each warp needs whole 16 x 16 fragments");

  int lane, wr, wc;
  __device__ MmaTile() {
    lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    wr = warp / WC;
    wc = warp % WC;
  }
  __device__ int row(int r) const { return wr * WM + (r >> 1) * 16 + (lane >> 2) + 8 * (r & 1); }
  __device__ int col(int c) const { return wc * WN + (c >> 1) * 8 + 2 * (lane & 3) + (c & 1); }

  // Global weights are [F][KR] and [F][F]; shared rows are padded to LD1 / LD2.
  static __device__ void load_weights(u16* W1s, u16* W2s, const u16* __restrict__ w1, const u16* __restrict__ w2) {
    for (int i = threadIdx.x; i < F * KR / 8; i += NT) {
      const int r = i / (KR / 8), c = i % (KR / 8);
      *reinterpret_cast<uint4*>(W1s + r * LD1 + c * 8) = __ldg(reinterpret_cast<const uint4*>(w1) + i);
    }
    for (int i = threadIdx.x; i < F * F / 8; i += NT) {
      const int r = i / (F / 8), c = i % (F / 8);
      *reinterpret_cast<uint4*>(W2s + r * LD2 + c * 8) = __ldg(reinterpret_cast<const uint4*>(w2) + i);
    }
  }

  template <bool TAN>
  static __device__ void fill_a1(u16* A1, u16* dA1, const float* d_s, const float* mu, const float* gam) {
    for (int i = threadIdx.x; i < TE * KR / 2; i += NT) {
      const int e = i / (KR / 2), k = 2 * (i % (KR / 2));
      float g[2] = {0.0f, 0.0f}, dg[2] = {0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (k + j < NRBF) {
          const float diff = d_s[e] - mu[k + j];
          g[j] = __expf(-gam[k + j] * diff * diff);  // MUFU: rounded to 16 bits right after
          dg[j] = -2.0f * gam[k + j] * diff * g[j];
        }
      }
      *reinterpret_cast<u32*>(A1 + e * LD1 + k) = pack2(g[0], g[1]);
      if (TAN) *reinterpret_cast<u32*>(dA1 + e * LD1 + k) = pack2(dg[0], dg[1]);
    }
  }

  template <int K, int LD, bool TAN>
  __device__ void gemm(float (&acc)[NR][NC], float (&dacc)[NR][NC], const u16* A, const u16* dA,
                       const u16* B) const {
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 16) {
      u32 a[MT][4], da[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int off = (wr * WM + mt * 16 + (lane & 15)) * LD + k0 + (lane >> 4) * 8;
        ldmatrix_x4(a[mt], A + off);
        if (TAN) ldmatrix_x4(da[mt], dA + off);
      }
#pragma unroll
      for (int np = 0; np < NTL / 2; ++np) {
        u32 b[4];
        ldmatrix_x4(b, B + (wc * WN + np * 16 + (lane >> 4) * 8 + (lane & 7)) * LD + k0 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int c = 4 * np + 2 * h;
            mma16816(acc[2 * mt][c], acc[2 * mt][c + 1], acc[2 * mt + 1][c], acc[2 * mt + 1][c + 1], a[mt],
                     b[2 * h], b[2 * h + 1]);
            if (TAN)
              mma16816(dacc[2 * mt][c], dacc[2 * mt][c + 1], dacc[2 * mt + 1][c], dacc[2 * mt + 1][c + 1], da[mt],
                       b[2 * h], b[2 * h + 1]);
          }
        }
      }
    }
  }
  template <bool TAN>
  __device__ void gemm1(float (&acc)[NR][NC], float (&dacc)[NR][NC], const u16* A1, const u16* dA1,
                        const u16* W1s) const {
    gemm<KR, LD1, TAN>(acc, dacc, A1, dA1, W1s);
  }
  template <bool TAN>
  __device__ void gemm2(float (&acc)[NR][NC], float (&dacc)[NR][NC], const u16* A2, const u16* dA2,
                        const u16* W2s) const {
    gemm<F, LD2, TAN>(acc, dacc, A2, dA2, W2s);
  }

  __device__ void store_act(u16* A, const float (&acc)[NR][NC]) const {
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int c = 0; c < NC; c += 2)
        *reinterpret_cast<u32*>(A + row(r) * LD2 + col(c)) = pack2(acc[r][c], acc[r][c + 1]);
  }

  __device__ void load_row(float (&out)[NC], const float* __restrict__ base, const int* rows, int r) const {
    const float* p = base + (long long)rows[row(r)] * F;
#pragma unroll
    for (int c = 0; c < NC; c += 2) {
      const float2 v = __ldg(reinterpret_cast<const float2*>(p + col(c)));
      out[c] = v.x;
      out[c + 1] = v.y;
    }
  }

  __device__ void store_msg(float* msg, const float (&acc)[NR][NC]) const {
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int c = 0; c < NC; c += 2)
        *reinterpret_cast<float2*>(msg + row(r) * MSG_STRIDE + col(c)) = make_float2(acc[r][c], acc[r][c + 1]);
  }

  __device__ void reduce_rows(float (&part)[NR], float* red) const {
    // The target address is recomputed from a fresh threadIdx.x: held across the
    // tile loop it spilled in the 16-bit backward (at its 128-register cap).
    const int t = fresh_tid(), w = t >> 5;
    float* dst = red + (w % WC) * TE + (w / WC) * WM + ((t & 31) >> 2);
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      float v = part[r];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      if ((t & 3) == 0) dst[(r >> 1) * 16 + 8 * (r & 1)] = v;
    }
  }
};
#endif

}  // namespace fs
