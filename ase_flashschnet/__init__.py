"""FlashSchNet: an IO-aware SchNet potential with fused CUDA kernels, for ASE.

    from ase_flashschnet import SchNet, load_model, FlashSchNetCalculator
    atoms.calc = FlashSchNetCalculator(model="path/or/name", device="auto", precision="fp32")

``load_model`` reads a model file or a shipped model by name
(``ase_flashschnet.shipped``).

Modules: ``model`` (the plain PyTorch reference, also the CPU path), ``neighbors``
(CSR neighbour lists with a Verlet skin), ``fused`` (the fused CUDA kernels),
``calculator`` (the ASE calculator), ``md`` (batched multi-replica MD: ``run_replicas``
and its settings, ``MDConfig``), ``static_neighbors`` and ``step_status`` (the
fixed-capacity neighbour graphs and the device-side status vector of MD), ``cli``,
and ``torchsim`` (the model for TorchSim's integrators; needs the optional
``torch-sim-atomistic``, so only ``import ase_flashschnet.torchsim`` loads it).
"""
__version__ = "0.1.0"

_LAZY = {
    "SchNet": "ase_flashschnet.model",
    "load_model": "ase_flashschnet.shipped",
    "FlashSchNetCalculator": "ase_flashschnet.calculator",
    "run_replicas": "ase_flashschnet.md",
    "MDConfig": "ase_flashschnet.md",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    # Lazy, so that importing the package needs neither a GPU nor ASE's heavier parts.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ase_flashschnet' has no attribute {name!r}")
