"""FusionRCG: electron repulsion integrals as recurrence computation graphs, on the GPU.

Use it as a PySCF plugin::

    from pyscf import gto, scf
    from pyscf_fusionrcg import fusionrcg
    mf = scf.RHF(mol).apply(fusionrcg)          # backend='auto' | 'gpu' | 'cpu'

The pipeline has one module per stage: ``graph`` (recurrence graph), ``schedule``
(liveness-aware orchestration), ``spherical`` (stepwise Cartesian-to-spherical
fusion), ``tiers`` (register / shared / global storage), ``codegen`` (CUDA
emission), ``pairmaps`` (the big classes' contracted stage as pair-matrix
products), ``launch`` (kernel launch), ``jk`` (one molecule's J/K context and
the host digestion), ``distributed`` (host builds shared by MPI ranks),
``gpu_jk`` (the GPU digestion), ``scf`` (the plugin), ``host`` (the CPU path),
``derivative`` (nuclear-derivative programs), ``grad`` (two-electron gradients,
and the plugin's Gradients objects) and ``report``; ``ase`` is an ASE
calculator around any SCF object, the plugin's or not.
"""
__version__ = "0.1.0"

__all__ = ["fusionrcg", "get_jk", "__version__"]


def __getattr__(name):
    # Lazy, so that `import pyscf_fusionrcg` stays light and never needs a GPU.
    if name == "fusionrcg":
        from pyscf_fusionrcg.scf import fusionrcg

        return fusionrcg
    if name == "get_jk":
        from pyscf_fusionrcg.jk import get_jk

        return get_jk
    raise AttributeError(f"module 'pyscf_fusionrcg' has no attribute {name!r}")
