// Density screening of a kept plan's quartets (pyscf_fusionrcg/gpu_jk.py).
//
// A plan (gpu_jk.JKPlan) keeps a geometry's Schwarz-screened quartets on the
// device as four 16-bit shell indices each (8 bytes instead of 16, so that
// the plans of (H2O)20/def2-QZVP and the like fit), oriented and in primitive
// order.  Every build keeps those that its own density's shell blocks keep:
// fr_plan_kept marks them in one pass over the plan, the same test as
// screening.kept_quartets (float32: dm *= q_cd, dm *= q_ab, dm >= tol, dm the
// largest |D| of the blocks the quartet reads: ab, cd for J and ac, ad, bc, bd
// for K), where that chain of array operations costs some twenty passes.

extern "C" __global__ void fr_plan_kept(
    const ushort4* __restrict__ quartets, int n, const float* __restrict__ q32,
    const float* __restrict__ d32, int nbas, float tol, int with_j, int with_k,
    bool* __restrict__ keep) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const ushort4 s = quartets[i];
  const int a = s.x * nbas, b = s.y * nbas;
  float dm = 0.f;
  if (with_j) dm = fmaxf(d32[a + s.y], d32[s.z * nbas + s.w]);
  if (with_k)
    dm = fmaxf(dm, fmaxf(fmaxf(d32[a + s.z], d32[a + s.w]), fmaxf(d32[b + s.z], d32[b + s.w])));
  dm *= q32[s.z * nbas + s.w];
  dm *= q32[a + s.y];
  keep[i] = (with_j || with_k) && dm >= tol;
}
