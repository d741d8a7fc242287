"""What of the fused FlashSchNet path can be checked without a GPU: the per-channel
16-bit quantisation, the configuration checks, the CSR preparation, refusal of a
CPU device, the derivative formulas the backward kernel implements (tangent
mode through the filter network, envelope derivative), checked against autograd,
and the schedule of the kernels' parallel segment sum, replayed in Python."""
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import gpucore
from ase_flashschnet import fused
from ase_flashschnet.fused import layouts
from ase_flashschnet.model import ACTIVATIONS, SchNet
from ase_flashschnet.neighbors import build_cpu


@pytest.mark.parametrize("dtype, u, tiny", [(torch.float16, 2.0**-11, 2.0**-25), (torch.bfloat16, 2.0**-8, 2.0**-133)])
def test_quantize_per_channel_round_trip(dtype, u, tiny):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 50, generator=g) * torch.logspace(-6, 2, 64)[:, None]  # rows over 8 decades
    w[3] = 0.0
    w[5, :10] = 1e-9 * w[5, :10]  # entries far below their row's maximum
    q, s = fused.quantize_per_channel(w, dtype)
    assert q.dtype == dtype and s.dtype == torch.float32 and q.shape == w.shape and s.shape == (64,)
    assert float(q.float().abs().max()) <= 1.0
    assert s[3] == 1.0 and bool((q[3] == 0).all())
    err = (s[:, None] * q.float() - w).abs()
    assert bool((err <= u * w.abs() + tiny * s[:, None]).all())
    # The scale makes each row's largest weight exactly representable (|w_q| = 1).
    assert torch.allclose(q.float().abs().amax(dim=1)[w.abs().amax(dim=1) > 0], torch.ones(63))


def test_kernel_defines_checks():
    assert fused.kernel_defines(128, 50, "tanh", "fp32") == {"F": 128, "NRBF": 50, "ACT": 0, "PREC": 0}
    assert fused.kernel_defines(64, 20, "silu", "bf16") == {"F": 64, "NRBF": 20, "ACT": 2, "PREC": 2}
    with pytest.raises(ValueError, match="num_filters"):
        fused.kernel_defines(96, 50, "tanh", "fp32")
    with pytest.raises(ValueError, match="activations"):
        fused.kernel_defines(128, 50, "relu", "fp32")
    with pytest.raises(ValueError, match="precision"):
        fused.kernel_defines(128, 50, "tanh", "fp8")
    with pytest.raises(ValueError, match="Gaussians"):
        fused.kernel_defines(128, 500, "tanh", "fp32")


def test_cfconv_flops():
    # Per edge: 2 x (K x F + F x F), K = 50 (fp32) or 64 (padded for the tensor cores).
    assert fused.cfconv_flops(1000, 128, 50, "fp32") == (1000 * 45_568, 2 * 1000 * 45_568)
    assert fused.cfconv_flops(1000, 128, 50, "bf16") == (1000 * 49_152, 2 * 1000 * 49_152)


_CSRC = gpucore.csrc_root()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("precision", ["fp32"] + [pytest.param(p, marks=pytest.mark.slow) for p in ("fp16", "bf16")])
def test_cfconv_compiles_for_sm90_without_spills(precision, tmp_path):
    """The benchmark configuration (128 filters, 50 Gaussians, tanh) builds for sm_90
    with no register spills in the default build; the variants that
    schnet_kernel_breakdown.py times against it (the previous serial segment sum,
    FS_SEGSUM=0, and the profiling build, FS_PROFILE=1) build too (a few spilled
    bytes are tolerated there: they are not what runs)."""
    defines = fused.kernel_defines(128, 50, "tanh", precision)
    for extra in ({}, {"FS_SEGSUM": 0}, {"FS_PROFILE": 1}):
        flags = [f"-D{k}={v}" for k, v in {**defines, **extra}.items()]
        out = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-std=c++17", f"-I{_CSRC}", *flags,
                              str(_CSRC / "flashschnet" / "cfconv.cu"), "-o", str(tmp_path / "cfconv.cubin")],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out.stderr)
        if not extra:
            assert len(spills) == 3 and all(a == "0" and b == "0" for a, b in spills), (extra, out.stderr)


def test_refuses_cpu_device():
    model = SchNet(hidden_channels=32, num_filters=64, num_rbf=16, cutoff=4.0, seed=0)
    with pytest.raises(gpucore.GPUUnavailableError, match="CUDA GPU"):
        fused.FusedSchNet(model, device="cpu")


@pytest.mark.skipif(gpucore.gpu_available() and torch.cuda.is_available(), reason="a GPU is present")
def test_refuses_without_gpu():
    model = SchNet(hidden_channels=32, num_filters=64, num_rbf=16, cutoff=4.0, seed=0)
    with pytest.raises(gpucore.GPUUnavailableError):
        fused.FusedSchNet(model)


def _random_graph(seed=0, n=40):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * 9.0
    batch = torch.arange(n) % 3
    return pos, batch, build_cpu(pos, 4.0, batch=batch, library="ase")


def test_csr_from_graph_and_from_unsorted_edges():
    pos, batch, graph = _random_graph()
    n = pos.shape[0]
    csr = layouts.Csr.from_graph(graph, n, "cpu")
    assert csr.dst.dtype == torch.int32 and csr.n_edges == graph.num_edges
    assert torch.equal(csr.dst_ptr.long(), graph.dst_ptr) and torch.equal(csr.src_order.long(), graph.src_order)
    # Atoms of each system, in a fixed order.
    for s in range(3):
        members = csr.sys_order[csr.sys_ptr[s]:csr.sys_ptr[s + 1]].long()
        assert torch.equal(members, (batch == s).nonzero().flatten())
    perm = torch.randperm(graph.num_edges, generator=torch.Generator().manual_seed(1))
    shuffled = layouts.Csr.from_edges(graph.edge_src[perm], graph.edge_dst[perm], n, batch, 3, "cpu")
    dst, src = shuffled.dst.long(), shuffled.src.long()
    assert bool((dst[1:] >= dst[:-1]).all())
    assert torch.equal(dst, graph.edge_dst[perm][shuffled.perm]) and torch.equal(src, graph.edge_src[perm][shuffled.perm])
    assert torch.equal(shuffled.dst_ptr.long(), graph.dst_ptr)
    by_src = src[shuffled.src_order.long()]
    assert bool((by_src[1:] >= by_src[:-1]).all())
    counts = torch.bincount(src, minlength=n)
    assert torch.equal(shuffled.src_ptr.long()[1:] - shuffled.src_ptr.long()[:-1], counts)


def _slope(name, z, y):
    """act'(z) as the kernels compute it (common.cuh: act_and_slope)."""
    if name == "tanh":
        return 1 - y * y
    s = torch.sigmoid(z)
    return s if name == "ssp" else s * (1 + z * (1 - s))


@pytest.mark.parametrize("activation", ["tanh", "ssp", "silu"])
def test_backward_formulas_match_autograd(activation):
    """cfconv_backward's algorithm in torch (float64): the filter network with a
    forward-mode tangent, the envelope derivative, grad_h by source and dE/dd per
    edge, against autograd of the reference CFConv."""
    torch.manual_seed(0)
    model = SchNet(hidden_channels=16, num_filters=64, num_interactions=1, num_rbf=12, cutoff=4.0,
                   activation=activation, seed=3).double()
    block, rbf = model.interactions[0], model.rbf
    pos, _, graph = _random_graph(seed=2, n=30)
    src, dst = graph.edge_src, graph.edge_dst
    d = graph.edge_vec(pos).norm(dim=1)
    d = torch.cat([d, torch.tensor([4.0, 4.5])])  # an edge at and one beyond the cutoff
    src, dst = torch.cat([src, torch.tensor([0, 1])]), torch.cat([dst, torch.tensor([2, 3])])
    h = torch.randn(30, 64, dtype=torch.float64)
    gm = torch.randn(30, 64, dtype=torch.float64)

    # Reference: autograd through model.py's formulas.
    d_ref, h_ref = d.clone().requires_grad_(), h.clone().requires_grad_()
    w = block.filter2(block.act(block.filter1(rbf(d_ref)))) * rbf.envelope(d_ref)[:, None]
    m = torch.zeros_like(h).index_add_(0, dst, h_ref[src] * w)
    grad_h_ref, grad_d_ref = torch.autograd.grad((m * gm).sum(), (h_ref, d_ref))

    # The kernel's algorithm.
    with torch.no_grad():
        diff = d[:, None] - rbf.centers
        g = torch.exp(-rbf.gamma * diff**2)
        dg = -2 * rbf.gamma * diff * g
        z = g @ block.filter1.weight.T + block.filter1.bias
        dz = dg @ block.filter1.weight.T
        y = ACTIVATIONS[activation](z)
        dy = _slope(activation, z, y) * dz
        f = y @ block.filter2.weight.T + block.filter2.bias
        df = dy @ block.filter2.weight.T
        inside = d < rbf.cutoff
        c = torch.where(inside, 0.5 * (torch.cos(math.pi * d / rbf.cutoff) + 1), 0.0)
        cp = torch.where(inside, -0.5 * math.pi / rbf.cutoff * torch.sin(math.pi * d / rbf.cutoff), 0.0)
        grad_d = (gm[dst] * h[src] * (cp[:, None] * f + c[:, None] * df)).sum(1)
        grad_h = torch.zeros_like(h).index_add_(0, src, gm[dst] * c[:, None] * f)
    torch.testing.assert_close(grad_d, grad_d_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_h, grad_h_ref, rtol=1e-10, atol=1e-12)
    assert grad_d[-1] == 0 and grad_d[-2] == 0


def _segsum_schedule(ptr, values, n_blocks, te, pl):
    """The FS_SEGSUM=1 segment sum of cfconv.cu (cfconv_body, seg_parts, seg_combine)
    step by step in Python, float32: per block its atom range, tiles of ``te`` edges
    from its first edge rounded down to a multiple of ``pl``, parts of ``pl`` edges,
    carries combined part after part. Returns the sums and how often each row was written."""
    n_atoms, n_edges = len(ptr) - 1, int(ptr[-1])
    seg = np.repeat(np.arange(n_atoms), np.diff(ptr))
    out = np.full((n_atoms, values.shape[1]), np.nan, dtype=np.float32)
    writes = np.zeros(n_atoms, dtype=int)
    n_part = te // pl

    def store(a, v):
        out[a] = v
        writes[a] += 1

    def combine(state, parts, last, a_end):
        c, is_open, run = state
        for h, t, head, tail in parts:
            if h < 0:
                continue
            if is_open and c == h:
                run = (run + head).astype(np.float32)
            else:
                while c < h:
                    store(c, run)
                    run = np.zeros_like(run)
                    c += 1
                run, is_open = head, True
            if t != h:
                store(c, run)
                c, run = t, tail
        if last:
            while c < a_end:
                store(c, run)
                run = np.zeros_like(run)
                c += 1
        return c, is_open, run

    zero = np.zeros(values.shape[1], dtype=np.float32)
    for b in range(n_blocks):
        a0 = int(np.searchsorted(ptr, n_edges * b // n_blocks, side="left"))
        a1 = n_atoms if b + 1 == n_blocks else int(np.searchsorted(ptr, n_edges * (b + 1) // n_blocks, side="left"))
        e_first, e_end = int(ptr[a0]), int(ptr[a1])
        e_start = e_first & ~(pl - 1) if e_first < e_end else e_end
        state, parts = (a0, False, zero), []
        for e0 in range(e_start, e_end, te):
            state = combine(state, parts, False, a1)
            n, jb = min(te, e_end - e0), max(e_first - e0, 0)
            parts = []
            for p in range(n_part):
                jlo, jhi = max(p * pl, jb), min(p * pl + pl, n)
                if jlo >= jhi:
                    parts.append((-1, -1, None, None))
                    continue
                h, t = seg[e0 + jlo], seg[e0 + jhi - 1]
                c, run, head = h, zero, None
                for j in range(jlo, jhi):
                    a = seg[e0 + j]
                    if a != c:
                        if c == h:
                            head = run
                        else:
                            store(c, run)
                        for x in range(c + 1, a):
                            store(x, zero)
                        c, run = a, zero
                    run = (run + values[e0 + j]).astype(np.float32)
                parts.append((h, t, run if head is None else head, run))
        combine(state, parts, True, a1)
    return out, writes


@pytest.mark.parametrize("te, pl", [(64, 16), (64, 8), (32, 8)])
def test_parallel_segment_sum_schedule(te, pl):
    """The parallel segment sum's schedule writes every atom exactly once (atoms
    without edges, at block ends and between parts, included) with its sum over its
    edges, and its rounding depends on the CSR only: bitwise the same for any grid."""
    rng = np.random.default_rng(0)
    counts = rng.choice([0, 0, 1, 3, 15, 16, 17, 40, 64, 65, 150], size=300)
    counts[:5] = 0
    counts[-7:] = 0
    ptr = np.concatenate([[0], np.cumsum(counts)])
    ints = rng.integers(-50, 50, size=(int(ptr[-1]), 4)).astype(np.float32)  # exact sums
    exact = np.add.reduceat(np.vstack([ints, np.zeros((1, 4), np.float32)]), ptr[:-1], axis=0)
    exact[counts == 0] = 0
    values = rng.normal(size=(int(ptr[-1]), 4)).astype(np.float32)
    first = None
    for n_blocks in (1, 3, 7, 64, 401):
        out, writes = _segsum_schedule(ptr, ints, n_blocks, te, pl)
        assert (writes == 1).all(), n_blocks
        assert np.array_equal(out, exact), n_blocks
        got = _segsum_schedule(ptr, values, n_blocks, te, pl)[0]
        if first is None:
            first = got
            np.testing.assert_allclose(got, np.add.reduceat(np.vstack([values, np.zeros((1, 4))]), ptr[:-1],
                                                            axis=0) * (counts > 0)[:, None], rtol=1e-5, atol=1e-5)
        assert np.array_equal(got, first), n_blocks


class _TorchCFConv:
    """cfconv_forward / cfconv_backward of kernels.Kernels in plain torch (fp32 weight
    layout of layouts.Block), so the dense part of FusedSchNet runs on the CPU."""

    def __init__(self, activation):
        self.act = ACTIVATIONS[activation]

    def _filter(self, d, blk):
        n_f = blk.w2.shape[0]
        b1, s1, b2, s2, rest = blk.params[:n_f], blk.params[n_f:2 * n_f], blk.params[2 * n_f:3 * n_f], \
            blk.params[3 * n_f:4 * n_f], blk.params[4 * n_f:]
        mu, gamma = rest[:len(rest) // 2], rest[len(rest) // 2:]
        g = torch.exp(-gamma * (d[:, None] - mu) ** 2)
        w = s2 * (self.act(s1 * (g @ blk.w1) + b1) @ blk.w2) + b2
        env = torch.where(d < blk.cutoff, 0.5 * (torch.cos(math.pi * d / blk.cutoff) + 1.0), 0.0)
        return w * env[:, None]

    def cfconv_forward(self, h, d, csr, blk):
        w = self._filter(d, blk)
        return torch.zeros_like(h).index_add_(0, csr.dst.long(), h[csr.src.long()] * w)

    def cfconv_backward(self, h, gm, d, csr, blk):
        with torch.enable_grad():
            h_, d_ = h.detach().requires_grad_(True), d.detach().requires_grad_(True)
            m = self.cfconv_forward(h_, d_, csr, blk)
            return torch.autograd.grad((m * gm).sum(), (h_, d_))


@pytest.mark.parametrize("activation, out_activation", [("tanh", None), ("ssp", "tanh"), ("silu", "ssp")])
def test_force_path_dense_part_matches_autograd(activation, out_activation):
    """FusedSchNet's hand-written force path (_energy_grad_d: folded biases, manual
    backward) against its autograd path (_schnet_atoms) and the reference SchNet,
    with the CFConv kernels replaced by torch on the CPU."""
    model = SchNet(hidden_channels=32, num_filters=64, num_interactions=3, num_rbf=12, cutoff=4.0,
                   activation=activation, output_activation=out_activation, num_types=5, energy_scale=1.7,
                   energy_shift=-0.3, seed=1)
    with torch.no_grad():
        model.atomref.copy_(torch.arange(5.0))
        for block in model.interactions:
            block.lin.bias.normal_()
    pos, batch, graph = _random_graph(seed=4, n=30)
    types = torch.arange(30) % 5
    fs = fused.FusedSchNet.__new__(fused.FusedSchNet)
    torch.nn.Module.__init__(fs)
    fs.device, fs.precision = torch.device("cpu"), "fp32"
    fs._act_name, fs._out_act_name = activation, out_activation or activation
    fs.act, fs.out_act = ACTIVATIONS[fs._act_name], ACTIVATIONS[fs._out_act_name]
    fs._load_weights(model)
    fs._kernels = _TorchCFConv(activation)
    csr = layouts.Csr.from_graph(graph, 30, "cpu")
    d = graph.edge_vec(pos).norm(dim=1).float()

    energy, grad_d = fs._energy_grad_d(types, d, csr)
    with torch.enable_grad():
        d_ = d.clone().requires_grad_(True)
        e_auto = fs._schnet_atoms(types, d_, csr)
        (g_auto,) = torch.autograd.grad(e_auto.sum(), d_)
    e_ref = model.double().per_atom_energies(types, pos, graph.edge_src, graph.edge_dst, graph.edge_vec(pos))
    torch.testing.assert_close(e_auto.double(), e_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(energy, e_auto.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_d, g_auto, rtol=1e-4, atol=1e-6)


def test_bonded_prior_kernels_refuse_partial_replicas():
    """The fused priors apply one molecule's topology per replica: an atom count that
    is not a whole number of molecules says so, as the torch priors do."""
    assert layouts.check_whole_replicas(538, 269, "bonded prior topologies") == 2
    with pytest.raises(ValueError, match="molecules of 269 atoms.*540 atoms.*not a whole number of replicas"):
        layouts.check_whole_replicas(540, 269, "bonded prior topologies")
