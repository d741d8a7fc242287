// Self-test kernel of the shared core: y[i] = a * x[i] + y[i].
// Used by `fusion-doctor` and the gpu tests to prove that NVRTC, the disk cache
// and launches on CuPy arrays and PyTorch tensors all work on this machine.
extern "C" __global__ void axpy_f64(const double* __restrict__ x, double* __restrict__ y,
                                    double a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
