"""Shared by the tests that build emitted or hand-written CUDA C++ with g++ (and
check it with nvcc): the toolchain markers, a parallel build into shared
libraries, the op-stream arguments as ctypes, and the emulation that runs
``__global__`` kernels on the CPU."""
import ctypes
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pyscf_fusionrcg import kernels

CSRC = pathlib.Path(__file__).resolve().parents[2] / 'csrc'
GXX = shutil.which('g++')
NVCC = shutil.which('nvcc') or (shutil.which('/usr/local/cuda/bin/nvcc'))

needs_gxx = pytest.mark.skipif(GXX is None, reason='g++ is not installed')
needs_nvcc = pytest.mark.skipif(NVCC is None, reason='nvcc is not installed')


def build_many(sources, tmp):
    """Compile several C++ sources into shared libraries concurrently."""
    procs = []
    for k, src in enumerate(sources):
        cpp = tmp / f'lib{k}.cpp'
        cpp.write_text(src)
        so = tmp / f'lib{k}.so'
        procs.append((so, subprocess.Popen(
            [GXX, '-O0', '-std=c++17', '-pthread', '-shared', '-fPIC', f'-I{CSRC}', str(cpp), '-o', str(so)],
            stderr=subprocess.PIPE, text=True)))
    libs = []
    for so, p in procs:
        err = p.communicate()[1]
        assert p.returncode == 0, err[-4000:]
        libs.append(ctypes.CDLL(str(so)))
    return libs


def printed_by_other_processes(script, seeds=('1', '2')):
    """What ``script`` prints (stripped) in fresh interpreters of each string
    hashing seed: generated texts must not depend on it."""
    out = []
    for seed in seeds:
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(CSRC.parent))
        out.append(subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                                  check=True).stdout.strip())
    return out


def stream_ctypes(prog, var):
    """The op-stream arguments of a table or levels variant as ctypes values."""
    if var.form not in ('table', 'levels'):
        return []
    return [ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray) else ctypes.c_int(a)
            for a in kernels.table(prog, var).stream_args()]


# ------------------------------------------------- kernels emulated on the CPU
#
# The __global__ kernels themselves (argument unpacking, the grid-stride loop,
# the [element][quartet] output, the shared and global scratch addressing,
# digestion) are built with g++ under a few macros and run thread by thread;
# fr_launch_warps runs kernels that use warp shuffles and votes with the 32
# lanes of a warp as concurrent host threads, one warp at a time (such a
# kernel must return from whole warps only, as on the GPU); fr_launch_blocks
# runs a block's threads so, for kernels with __syncthreads.

EMULATION = r'''
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
struct FrDim { unsigned x = 1, y = 1, z = 1; };
static thread_local FrDim blockIdx, threadIdx;
static FrDim blockDim, gridDim;
#define __global__
#define __device__
#define __shared__
#define __constant__
#define __forceinline__ inline
#define __launch_bounds__(...)
double fr_smem[1 << 21];
static std::mutex fr_atomic_mutex;
inline double atomicAdd(double* a, double v) {
  std::lock_guard<std::mutex> hold(fr_atomic_mutex);
  double o = *a; *a += v; return o;
}
template <class F, class... A>
void fr_launch(F f, int grid, int block, A... a) {
  gridDim.x = grid; blockDim.x = block;
  for (int b = 0; b < grid; ++b)
    for (int t = 0; t < block; ++t) { blockIdx.x = b; threadIdx.x = t; f(a...); }
}
// a barrier of n host threads
struct FrBarrier {
  std::mutex m; std::condition_variable cv; int n = 32, waiting = 0, phase = 0;
  void sync() {
    std::unique_lock<std::mutex> hold(m);
    const int my_phase = phase;
    if (++waiting == n) { waiting = 0; ++phase; cv.notify_all(); }
    else cv.wait(hold, [&] { return phase != my_phase; });
  }
};
// one warp's lanes exchange values through slots, two barriers per exchange
struct FrWarp : FrBarrier {
  unsigned long long slots[32];
  unsigned long long exchange(unsigned long long mine, int src) {
    slots[threadIdx.x & 31] = mine; sync();
    const unsigned long long got = slots[src & 31]; sync();
    return got;
  }
};
static thread_local FrWarp* fr_warp = nullptr;
template <class T> T fr_exchange(T v, int src) {
  unsigned long long bits = 0; std::memcpy(&bits, &v, sizeof(T));
  bits = fr_warp->exchange(bits, src);
  T out; std::memcpy(&out, &bits, sizeof(T)); return out;
}
template <class T> T __shfl_sync(unsigned, T v, int src) { return fr_exchange(v, src); }
template <class T> T __shfl_xor_sync(unsigned, T v, int o) {
  return fr_exchange(v, (int)(threadIdx.x & 31) ^ o);
}
inline void __syncwarp(unsigned = 0xffffffffu) { fr_warp->sync(); }
template <class T> T __shfl_up_sync(unsigned, T v, unsigned d) {
  const int lane = threadIdx.x & 31;
  return fr_exchange(v, lane >= (int)d ? lane - (int)d : lane);
}
template <class T> T __shfl_down_sync(unsigned, T v, unsigned d) {
  const int lane = threadIdx.x & 31;
  return fr_exchange(v, lane + (int)d < 32 ? lane + (int)d : lane);
}
inline unsigned __ballot_sync(unsigned, int p) {
  fr_warp->slots[threadIdx.x & 31] = p ? 1 : 0; fr_warp->sync();
  unsigned bits = 0;
  for (int lane = 0; lane < 32; ++lane) bits |= (unsigned)fr_warp->slots[lane] << lane;
  fr_warp->sync();
  return bits;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
// 32 host threads, the lanes, walk the warps of the grid in the same order;
// grid: FrDim{x, y, z}, or a count of blocks
template <class F, class... A>
void fr_launch_warps(F f, FrDim grid, int block, A... a) {
  gridDim = grid; blockDim.x = block;
  FrWarp warp;
  std::vector<std::thread> lanes;
  for (int lane = 0; lane < 32; ++lane)
    lanes.emplace_back([&, lane] {
      fr_warp = &warp;
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx)
            for (int w = 0; w < block / 32; ++w) {
              blockIdx.x = bx; blockIdx.y = by; blockIdx.z = bz; threadIdx.x = w * 32 + lane; f(a...);
            }
    });
  for (auto& t : lanes) t.join();
}
template <class F, class... A>
void fr_launch_warps(F f, int grid, int block, A... a) {
  fr_launch_warps(f, FrDim{(unsigned)grid}, block, a...);
}
// kernels that synchronise their blocks (__syncthreads): one block at a
// time, its threads as concurrent host threads
static FrBarrier* fr_block = nullptr;
inline void __syncthreads() { fr_block->sync(); }
template <class F, class... A>
void fr_launch_blocks(F f, int grid, int block, A... a) {
  gridDim.x = grid; blockDim.x = block;
  FrBarrier barrier; barrier.n = block; fr_block = &barrier;
  for (int b = 0; b < grid; ++b) {
    std::vector<std::thread> threads;
    for (int t = 0; t < block; ++t)
      threads.emplace_back([&, b, t] { blockIdx.x = b; threadIdx.x = t; f(a...); });
    for (auto& t : threads) t.join();
  }
}
'''


def emulated(src_and_entries, tmp, warp_lanes=False):
    """Build sources under the emulation; ``warp_lanes``: the levels form's
    lanes are real (FR_WARP_EMULATION), to be run by fr_launch_warps."""
    return emulated_many([src_and_entries], tmp, warp_lanes)[0]


def emulated_many(libraries, tmp, warp_lanes=False):
    """:func:`emulated` for several libraries (lists of sources), built at once."""
    head = ('#define FR_WARP_EMULATION\n' if warp_lanes else '') + EMULATION
    return build_many([head + ''.join(srcs) for srcs in libraries], tmp)
