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
