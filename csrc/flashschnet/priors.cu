// Physical priors of FlashSchNet's force path (ase_flashschnet/priors.py: Repulsion,
// HarmonicBonds, HarmonicAngles) with analytic first derivatives, in fp32: the same
// functions as the torch priors, without an autograd graph over every edge slot.
//
// Conventions (as geometry.cu): positions (N, 3) fp32; edges in the CSR by destination,
// d[e] = |pos[src] - pos[dst] + shift_e| from edge_lengths; only the edges in
// [dst_ptr[a], dst_ptr[a + 1]) are visited (padding slots of a static list never are).
// Replicas are consecutive blocks of mol_atoms atoms (the multi-replica MD layout):
// atom = replica * mol_atoms + local. Bonded topologies are the LOCAL index rows of
// one molecule (int32; bonds (i, j), angles (i, j, k) with vertex j), applied to every
// replica without being replicated in memory. Per-atom virials are 3 x 3 row major,
// virial[i][j] = sum over a term's atoms of (x_a - x_first)_i F_a_j: -dE/d(strain) for
// x -> x (I + strain), the convention of edge_forces. A bonded term's virial goes to
// the row of its first atom, so its atoms must belong to one system (as a replica's do).
//
// Repulsion is an edge term evaluated before edge_forces: it adds its dE/dd to grad_d
// (edge_forces then makes its forces and virial) and its energy to per_atom, one warp
// per atom in a fixed order: deterministic, no atomics. The bonded terms run after
// edge_forces and add forces, per-atom energies and virials with atomicAdd, so those
// sums are NOT bitwise reproducible from run to run (the SchNet part still is).

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float3 operator+(float3 a, float3 b) { return make_float3(a.x + b.x, a.y + b.y, a.z + b.z); }
__device__ __forceinline__ float3 operator-(float3 a, float3 b) { return make_float3(a.x - b.x, a.y - b.y, a.z - b.z); }
__device__ __forceinline__ float3 operator-(float3 a) { return make_float3(-a.x, -a.y, -a.z); }
__device__ __forceinline__ float3 operator*(float s, float3 a) { return make_float3(s * a.x, s * a.y, s * a.z); }
__device__ __forceinline__ float dot(float3 a, float3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
__device__ __forceinline__ float3 cross(float3 a, float3 b) {
  return make_float3(a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x);
}
__device__ __forceinline__ float3 position(const float* __restrict__ pos, int a) {
  return make_float3(pos[3 * a], pos[3 * a + 1], pos[3 * a + 2]);
}

// x^n by repeated squaring (n may be negative).
__device__ __forceinline__ float int_pow(float x, int n) {
  float r = 1.0f;
  for (int m = n < 0 ? -n : n; m; m >>= 1, x *= x)
    if (m & 1) r *= x;
  return n < 0 ? 1.0f / r : r;
}

// Whether query is one of the n_keys sorted keys.
__device__ __forceinline__ bool contains(const long long* __restrict__ keys, int n_keys, long long query) {
  int lo = 0, hi = n_keys;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (keys[mid] < query) lo = mid + 1;
    else hi = mid;
  }
  return lo < n_keys && keys[lo] == query;
}

__device__ __forceinline__ void add_force(float* __restrict__ forces, int a, float3 f) {
  atomicAdd(forces + 3 * a, f.x);
  atomicAdd(forces + 3 * a + 1, f.y);
  atomicAdd(forces + 3 * a + 2, f.z);
}

// row += x (outer) f (3 x 3, row major).
__device__ __forceinline__ void add_outer(float* __restrict__ row, float3 x, float3 f) {
  const float xs[3] = {x.x, x.y, x.z};
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    atomicAdd(row + 3 * i, xs[i] * f.x);
    atomicAdd(row + 3 * i + 1, xs[i] * f.y);
    atomicAdd(row + 3 * i + 2, xs[i] * f.z);
  }
}

// Repulsion E = (sigma/r)^n - (sigma/rc)^n for r < rc over the edges of each destination
// atom a (one warp per atom), half to a per directed edge, as priors.Repulsion:
//   grad_d[e] += 0.5 dE/dr = -0.5 n (sigma/r)^n / r,   per_atom[a] += sum_e 0.5 E.
// sigma[types[src] * sigma_cols + types[dst]] (a scalar comes as a table of equal
// entries). Pairs whose local key (src % mol_atoms) * mol_atoms + dst % mol_atoms is in
// excluded_keys (sorted, both directions) give nothing; n_keys = 0: no exclusions.
extern "C" __global__ void repulsion_edges(const float* __restrict__ d, const int* __restrict__ src,
                                           const int* __restrict__ dst_ptr, const long long* __restrict__ types,
                                           const float* __restrict__ sigma, int sigma_cols, int exponent,
                                           float cutoff, const long long* __restrict__ excluded_keys, int n_keys,
                                           int mol_atoms, int n_atoms, float* __restrict__ grad_d,
                                           float* __restrict__ per_atom) {
  const int a = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (a >= n_atoms) return;
  const long long type_a = types[a];
  const long long local_a = a % mol_atoms;
  float energy = 0.0f;
  for (int e = dst_ptr[a] + lane; e < dst_ptr[a + 1]; e += 32) {
    const float r = d[e];
    if (!(r < cutoff)) continue;
    const int s = src[e];
    if (n_keys && contains(excluded_keys, n_keys, (long long)(s % mol_atoms) * mol_atoms + local_a)) continue;
    const float sg = sigma[types[s] * sigma_cols + type_a];
    const float q = int_pow(sg / r, exponent);
    energy += 0.5f * (q - int_pow(sg / cutoff, exponent));
    grad_d[e] -= 0.5f * (float)exponent * q / r;
  }
  energy = warp_sum(energy);
  if (lane == 0) per_atom[a] += energy;
}

// Harmonic bonds E = 0.5 k (r - r0)^2, r = |x_j - x_i|, one thread per (replica, bond);
// E/2 to each atom. r = 0 gives no force (torch's subgradient of the norm). virials:
// nullptr for none; the term's virial (x_j - x_i) (outer) F_j goes to atom i's row.
extern "C" __global__ void harmonic_bonds(const float* __restrict__ pos, const int* __restrict__ bonds,
                                          const float* __restrict__ k, const float* __restrict__ r0, int n_terms,
                                          int mol_atoms, int n_replicas, float* __restrict__ forces,
                                          float* __restrict__ per_atom, float* __restrict__ virials) {
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= (long long)n_terms * n_replicas) return;
  const int term = (int)(t % n_terms), base = (int)(t / n_terms) * mol_atoms;
  const int i = base + bonds[2 * term], j = base + bonds[2 * term + 1];
  const float3 b = position(pos, j) - position(pos, i);
  const float r = sqrtf(dot(b, b));
  const float stretch = r - r0[term];
  const float share = 0.5f * (0.5f * k[term] * stretch * stretch);
  atomicAdd(per_atom + i, share);
  atomicAdd(per_atom + j, share);
  const float3 f_j = (r > 0.0f ? -k[term] * stretch / r : 0.0f) * b;
  add_force(forces, j, f_j);
  add_force(forces, i, -f_j);
  if (virials) add_outer(virials + 9 * i, b, f_j);
}

// Harmonic angles E = 0.5 k (theta - theta0)^2 at vertex j, theta = atan2(|u x v|, u.v),
// u = x_i - x_j, v = x_k - x_j; one thread per (replica, angle), E/3 to each atom.
// dtheta/du = (c u/|u|^2 - v)/s, dtheta/dv = (c v/|v|^2 - u)/s (c = u.v, s = |u x v|),
// dtheta/dx_j = -(dtheta/du + dtheta/dv); s = 0 gives no force (torch's subgradient of
// the norm). As F_j = -(F_i + F_k) exactly, sum_a (x_a - x_i) (outer) F_a =
// u (outer) F_i + v (outer) F_k, added to atom i's virial row.
extern "C" __global__ void harmonic_angles(const float* __restrict__ pos, const int* __restrict__ angles,
                                           const float* __restrict__ k, const float* __restrict__ theta0,
                                           int n_terms, int mol_atoms, int n_replicas, float* __restrict__ forces,
                                           float* __restrict__ per_atom, float* __restrict__ virials) {
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= (long long)n_terms * n_replicas) return;
  const int term = (int)(t % n_terms), base = (int)(t / n_terms) * mol_atoms;
  const int i = base + angles[3 * term], j = base + angles[3 * term + 1], l = base + angles[3 * term + 2];
  const float3 x_j = position(pos, j);
  const float3 u = position(pos, i) - x_j, v = position(pos, l) - x_j;
  const float c = dot(u, v);
  const float3 w = cross(u, v);
  const float s = sqrtf(dot(w, w));
  const float bend = atan2f(s, c) - theta0[term];
  const float share = 0.5f * k[term] * bend * bend / 3.0f;
  atomicAdd(per_atom + i, share);
  atomicAdd(per_atom + j, share);
  atomicAdd(per_atom + l, share);
  if (!(s > 0.0f)) return;
  const float g = -k[term] * bend / s;  // -dE/dtheta / s
  const float3 f_i = g * ((c / dot(u, u)) * u - v), f_k = g * ((c / dot(v, v)) * v - u);
  add_force(forces, i, f_i);
  add_force(forces, l, f_k);
  add_force(forces, j, -(f_i + f_k));
  if (virials) {
    add_outer(virials + 9 * i, u, f_i);
    add_outer(virials + 9 * i, v, f_k);
  }
}
