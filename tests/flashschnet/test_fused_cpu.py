"""What of the fused FlashSchNet path can be checked without a GPU: the per-channel
16-bit quantisation, the configuration checks, the CSR preparation, refusal of a
CPU device, and the derivative formulas the backward kernel implements (tangent
mode through the filter network, envelope derivative), checked against autograd."""
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import gpucore
from ase_flashschnet import fused
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


_CSRC = Path(fused.__file__).resolve().parents[1] / "csrc"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cfconv_compiles_for_sm90_without_spills(precision, tmp_path):
    """The benchmark configuration (128 filters, 50 Gaussians, tanh) builds for sm_90
    with no register spills, in the default build and in the previous tile loop that
    schnet_kernel_breakdown.py times against it; its profiling build (FS_PROFILE=1)
    builds too (a few spilled bytes are tolerated there)."""
    defines = fused.kernel_defines(128, 50, "tanh", precision)
    for extra in ({}, {"FS_PIPELINE": 0, "SEG_CHUNK": 1}, {"FS_PROFILE": 1}):
        flags = [f"-D{k}={v}" for k, v in {**defines, **extra}.items()]
        out = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-std=c++17", f"-I{_CSRC}", *flags,
                              str(_CSRC / "flashschnet" / "cfconv.cu"), "-o", str(tmp_path / "cfconv.cubin")],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out.stderr)
        if "FS_PROFILE" not in extra:
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
    csr = fused._Csr.from_graph(graph, n, "cpu")
    assert csr.dst.dtype == torch.int32 and csr.n_edges == graph.num_edges
    assert torch.equal(csr.dst_ptr.long(), graph.dst_ptr) and torch.equal(csr.src_order.long(), graph.src_order)
    # Atoms of each system, in a fixed order.
    for s in range(3):
        members = csr.sys_order[csr.sys_ptr[s]:csr.sys_ptr[s + 1]].long()
        assert torch.equal(members, (batch == s).nonzero().flatten())
    perm = torch.randperm(graph.num_edges, generator=torch.Generator().manual_seed(1))
    shuffled = fused._Csr.from_edges(graph.edge_src[perm], graph.edge_dst[perm], n, batch, 3, "cpu")
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
