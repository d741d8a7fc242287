"""The PySCF plugin: an SCF object whose J and K come from FusionRCG.

``mf = fusionrcg(mf)`` (or ``mf.apply(fusionrcg, backend=...)``) follows PySCF's
mixin convention (as ``density_fit``): the object's class becomes
``(_FusionRCGMixin, type(mf))``, which overrides ``get_jk``, ``get_j`` and
``get_k`` and nothing else, so every driver (RHF, UHF, ROHF, RKS/UKS with hybrid
and range-separated functionals, scanners) keeps working unchanged.  Its
``nuc_grad_method()`` / ``Gradients()`` objects take their derivative J/K from
FusionRCG too on the host path (:mod:`pyscf_fusionrcg.grad`).
``mf.undo_fusionrcg()`` gives back the plain class.  The same works on
GPU4PySCF objects (``mf.to_gpu().apply(fusionrcg)``), whose arrays are CuPy.
"""
from __future__ import annotations

from pyscf import gto, lib
from pyscf.lib import logger

from pyscf_fusionrcg import jk as _jk
from pyscf_fusionrcg.distributed import as_reducer, resolve_devices
from pyscf_fusionrcg.ir import MAX_L
from pyscf_fusionrcg.options import Options, from_env

#: Mean-field families whose J/K have PySCF's (nao, nao) shapes.
_SUPPORTED = ("RHF", "UHF", "ROHF")


def max_l():
    """Highest angular momentum the engine supports (``ir.MAX_L``)."""
    return MAX_L


def _check_mean_field(mf):
    """Refuse what these J/K cannot serve: clear errors rather than wrong numbers."""
    names = {c.__name__ for c in type(mf).__mro__}
    if hasattr(mf, "cell"):
        raise ValueError("fusionrcg supports molecules only; periodic (pbc) SCF objects "
                         "are not supported.")
    if getattr(mf, "with_df", None):
        raise ValueError(
            "fusionrcg computes exact four-centre J/K, but this SCF object uses density "
            "fitting (mf.with_df is set). Drop density_fit first (mf.undo_df(), or build "
            "the object without .density_fit()) and then apply fusionrcg.")
    if not names.intersection(_SUPPORTED):
        raise ValueError(f"fusionrcg supports RHF/UHF/ROHF and their Kohn-Sham versions, "
                         f"not {type(mf).__name__} (GHF/DHF need spinor J/K).")


def _check_mol(mol):
    lmax = int(mol._bas[:, gto.ANG_OF].max()) if mol.nbas else 0
    if lmax > max_l():
        raise ValueError(f"fusionrcg supports shells up to l = {max_l()}; the basis of this "
                         f"molecule has l = {lmax}.")


def _resolve_backend(mf, backend):
    """'gpu', 'cpu' or 'native' (the object's own J/K, when 'auto' finds no GPU)."""
    from gpucore import GPUUnavailableError, gpu_available, unavailable_reason
    if backend == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if backend == "gpu":
        raise GPUUnavailableError(
            f"fusionrcg(backend='gpu') needs a CUDA GPU: {unavailable_reason()}. "
            "Use backend='cpu' for the host path, or 'auto' to fall back to PySCF.")
    logger.warn(mf, "fusionrcg: no usable GPU (%s); J/K fall back to %s's own "
                "implementation. Use backend='cpu' for FusionRCG's host path.",
                unavailable_reason(), type(mf).__name__)
    return "native"


def fusionrcg(mf, backend=None, direct_scf_tol=None, tier=None, options: Options = None, comm=None, **more):
    """Serve ``mf``'s J and K with FusionRCG; returns the (re-classed) SCF object.

    backend: 'auto' (the default: GPU when available, else the object's own
    J/K with a warning), 'gpu' (GPUUnavailableError without a GPU) or 'cpu'
    (the engine's host path).  direct_scf_tol: screening threshold (None:
    ``mf.direct_scf_tol`` at call time).  tier: force one storage tier of the
    GPU kernels (None lets the routing choose).  The other options of
    :class:`~pyscf_fusionrcg.options.Options` (``ctr``, ``fuse_digestion``,
    ``scratch_mb``, ``progress``, ``j_engine``, ``gpu_gradients``,
    ``devices``) go by keyword too, or whole as ``options``;
    what is not given comes from the environment (``FUSIONRCG_*``), else the
    defaults.  comm: an mpi4py communicator whose ranks, all running this
    SCF, share each J/K build, on the GPU path one GPU per rank; devices
    ('all' or GPU ids): the GPUs of this process that share each build of
    the GPU path (:mod:`pyscf_fusionrcg.distributed`).
    """
    given = dict(backend=backend, direct_scf_tol=direct_scf_tol, tier=tier, **more)
    if options is None:
        options = from_env(**given)
    elif any(v is not None for v in given.values()):
        options = options.replace(**{k: v for k, v in given.items() if v is not None})
    _check_mean_field(mf)
    _check_mol(mf.mol)
    path = _resolve_backend(mf, options.backend)
    _jk.check_sharing(path, options, comm)
    if path == "gpu" and options.devices is not None:
        resolve_devices(options.devices)    # a GPU this machine lacks refused now, not at the first build
    if isinstance(mf, _FusionRCGMixin):
        mf = mf.copy()
        mf._fusionrcg_configure(options, path, comm)
        return mf
    obj = _FusionRCGMixin(mf, options, path, comm)
    return lib.set_class(obj, (_FusionRCGMixin, mf.__class__))


class _DensityKey:
    """What a J or K request was for: geometry, hermiticity, operator and a
    copy of the density (compared element by element, NumPy or CuPy)."""

    def __init__(self, mol, dm, hermi, omega):
        self.head = (_jk.mol_fingerprint(mol), hermi, float(mol.omega if omega is None else omega))
        self.dm = dm.copy()

    def __eq__(self, other):
        if not isinstance(other, _DensityKey) or self.head != other.head:
            return False
        a, b = self.dm, other.dm
        if type(a) is not type(b) or a.shape != b.shape:
            return False
        return bool((a == b).all())


class _PairedK:
    """GPU4PySCF's SCF drivers ask for J and then K of the same density in two
    calls (``get_veff``: ``get_j(ddm)``, then ``get_k(ddm)``), which would
    compute every integral twice.  Once such a pair has been seen, ``get_j``
    builds J and K in one pass and keeps K for the ``get_k`` that follows; if
    that K is not asked for (a pure functional), pairing stops again."""

    def __init__(self):
        self.fuse = False
        self.last_j = None      # _DensityKey of the last get_j
        self.kept = None        # (_DensityKey, K) built along with it

    def start_j(self, key):
        if self.kept is not None:
            self.fuse = False   # the K built with the last J was never asked for
        self.last_j, self.kept = key, None
        return self.fuse

    def keep(self, vk):
        self.kept = (self.last_j, vk)

    def take(self, key):
        """The K kept for ``key``, else None (and learn to pair when the last J
        was for the same density)."""
        if self.kept is not None and self.kept[0] == key:
            vk, self.kept = self.kept[1], None
            return vk
        if self.last_j is not None and self.last_j == key:
            self.fuse = True
        return None


class _FusionRCGMixin:
    """J/K from FusionRCG; everything else from the wrapped SCF class."""

    __name_mixin__ = "FusionRCG"
    _keys = {"fusionrcg_options"}

    def __init__(self, mf, options, path, comm=None):
        self.__dict__.update(mf.__dict__)
        self._eri = None    # with an in-core ERI, get_veff would not build incrementally
        self._fusionrcg_configure(options, path, comm)

    def _fusionrcg_configure(self, options, path, comm=None):
        self.fusionrcg_options = options
        self._fusionrcg_path = path
        self._fusionrcg_comm = comm
        self._fusionrcg_forget()

    def _fusionrcg_forget(self):
        """Drop what the builds kept: the J/K contexts (one per operator, all
        of the current geometry) and the K kept along with a J."""
        self._fusionrcg_contexts = {}
        self._fusionrcg_paired = _PairedK()

    def undo_fusionrcg(self):
        """The same object with its original class and PySCF's own J/K."""
        obj = lib.view(self, lib.drop_class(self.__class__, _FusionRCGMixin))
        for key in ("fusionrcg_options", "_fusionrcg_path", "_fusionrcg_comm", "_fusionrcg_contexts",
                    "_fusionrcg_paired"):
            obj.__dict__.pop(key, None)
        return obj

    def reset(self, mol=None):
        self._fusionrcg_forget()
        return super().reset(mol)

    def copy(self):
        """A shallow copy, as PySCF's, whose J/K builds keep their own contexts."""
        obj = super().copy()
        obj._fusionrcg_forget()
        return obj

    def nuc_grad_method(self):
        """The wrapped class's Gradients, with FusionRCG's derivative J/K
        (:func:`_fusionrcg_gradients`)."""
        return self._fusionrcg_gradients(super().nuc_grad_method())

    def Gradients(self):
        import pyscf.grad  # noqa: F401  (attaches Gradients to PySCF's SCF classes)
        return self._fusionrcg_gradients(super().Gradients())

    def _fusionrcg_gradients(self, mf_grad):
        """``mf_grad`` with FusionRCG's derivative integrals
        (:mod:`pyscf_fusionrcg.grad`), PySCF's Gradients classes and
        GPU4PySCF's alike, on the path of the J/K builds: the host's
        (``backend='cpu'``) or the GPU's.  The 'native' path (no GPU) keeps
        PySCF's gradients, as its J/K.  On the GPU path and for GPU4PySCF's
        classes that needs ``gpu_gradients=True`` (off by default until the
        derivative kernels have run on a GPU); otherwise, and for a GPU4PySCF
        class without its per-atom hook, the gradients stay the wrapped
        class's own, with a warning: a geometry optimisation should not stop
        for that (the numbers are PySCF's or GPU4PySCF's, exact all the same)."""
        if self._fusionrcg_path == "native":
            return mf_grad
        from pyscf_fusionrcg.grad import fusionrcg_gradients, is_gpu4pyscf
        if (self._fusionrcg_path == "gpu" or is_gpu4pyscf(mf_grad)) and not self.fusionrcg_options.gpu_gradients:
            logger.warn(self, "FusionRCG: the two-electron part of these gradients comes from %s; "
                        "gpu_gradients=True (FUSIONRCG_GPU_GRADIENTS=1) takes it from FusionRCG's "
                        "derivative kernels, off by default until they have run on a GPU.",
                        type(mf_grad).__name__)
            return mf_grad
        try:
            return fusionrcg_gradients(mf_grad, self.fusionrcg_options, self._fusionrcg_path)
        except ValueError as exc:
            logger.warn(self, "FusionRCG: %s; the two-electron part of these gradients comes from %s "
                        "itself.", exc, type(mf_grad).__name__)
            return mf_grad

    def density_fit(self, *args, **kwargs):
        raise ValueError(
            "density_fit() would replace FusionRCG's exact four-centre J/K by density-fitted "
            "ones. For density fitting use mf.undo_fusionrcg().density_fit(); for exact J/K "
            "keep this object as it is.")

    def to_gpu(self):
        """GPU4PySCF twin, with the plugin re-applied with the same settings."""
        return fusionrcg(self.undo_fusionrcg().to_gpu(), options=self.fusionrcg_options,
                         comm=self._fusionrcg_comm)

    def dump_flags(self, verbose=None):
        super().dump_flags(verbose)
        log = logger.new_logger(self, verbose)
        log.info("******** FusionRCG J/K ********")
        opts = self.fusionrcg_options
        log.info("backend = %s (requested %s)", self._fusionrcg_path, opts.backend)
        log.info("direct_scf_tol = %g", self._fusionrcg_tol())
        log.info("tier = %s", opts.tier or "automatic")
        log.info("contracted stage = %s, fused digestion = %s", opts.ctr, opts.fuse_digestion)
        if self._fusionrcg_comm is not None:
            log.info("J/K builds shared by %d ranks", as_reducer(self._fusionrcg_comm).size)
        if opts.devices is not None and self._fusionrcg_path == "gpu":
            log.info("GPU builds shared by the GPUs %s", opts.devices)
        if self.mol.has_ecp():
            log.info("ECP: enters the one-electron Hamiltonian only; J/K are unaffected")
        return self

    def _fusionrcg_tol(self):
        tol = self.fusionrcg_options.direct_scf_tol
        return self.direct_scf_tol if tol is None else tol

    def _fusionrcg_context(self, mol, omega):
        """The :class:`~pyscf_fusionrcg.jk.JKContext` of this geometry and
        operator; a new geometry (a scanner, an optimiser) drops the others."""
        contexts = self._fusionrcg_contexts
        context = contexts.get(omega)
        if context is None or not context.serves(mol, omega):
            _check_mol(mol)
            if any(not c.serves(mol, c.omega) for c in contexts.values()):
                contexts.clear()
            context = contexts[omega] = _jk.JKContext(mol, omega, self._fusionrcg_path,
                                                     self.fusionrcg_options, comm=self._fusionrcg_comm)
        return context

    def _fusionrcg_jk(self, mol, dm, hermi, with_j, with_k, omega):
        """One FusionRCG build for one operator (NumPy or CuPy in and out, as dm)."""
        context = self._fusionrcg_context(mol, omega)
        return context.get_jk(dm, hermi, with_j, with_k, self._fusionrcg_tol())

    def get_jk(self, mol=None, dm=None, hermi=1, with_j=True, with_k=True, omega=None,
               lr_factor=None, sr_factor=None):
        """J and K as PySCF's ``get_jk``; with GPU4PySCF's ``lr_factor``/``sr_factor``
        K is ``lr_factor K[erf] + sr_factor K[erfc]`` and J the plain Coulomb one.
        """
        if mol is None:
            mol = self.mol
        if dm is None:
            dm = self.make_rdm1()
        if self._fusionrcg_path == "native":
            # Only without a GPU, hence never a GPU4PySCF object (no rsh factors).
            return super().get_jk(mol, dm, hermi, with_j, with_k, omega)
        t0 = (logger.process_clock(), logger.perf_counter())
        if lr_factor is None and sr_factor is None:
            omega = float(mol.omega if omega is None else omega)
            vj, vk = self._fusionrcg_jk(mol, dm, hermi, with_j, with_k, omega)
        else:
            vj = self._fusionrcg_jk(mol, dm, hermi, True, False, 0.0)[0] if with_j else None
            vk = self._scaled_k(mol, dm, hermi, omega, lr_factor, sr_factor) if with_k else None
        logger.timer(self, "vj and vk (FusionRCG %s)" % self._fusionrcg_path, *t0)
        return vj, vk

    def _scaled_k(self, mol, dm, hermi, omega, lr_factor, sr_factor):
        """``lr_factor K[erf(|w| r)/r] + sr_factor K[erfc(|w| r)/r]`` (a factor None is 0)."""
        vk = 0
        for om, f in _k_terms(mol, omega, lr_factor, sr_factor):
            vk = vk + self._fusionrcg_jk(mol, dm, hermi, False, True, om)[1] * f
        return vk

    def get_j(self, mol=None, dm=None, hermi=1, omega=None):
        if mol is None:
            mol = self.mol
        if dm is None:
            dm = self.make_rdm1()
        if self._fusionrcg_path == "native":
            return super().get_jk(mol, dm, hermi, True, False, omega)[0]
        paired = self._fusionrcg_paired
        if paired.start_j(_DensityKey(mol, dm, hermi, omega)):
            vj, vk = self.get_jk(mol, dm, hermi, True, True, omega)
            paired.keep(vk)
            return vj
        return self.get_jk(mol, dm, hermi, True, False, omega)[0]

    def get_k(self, mol=None, dm=None, hermi=1, omega=None, lr_factor=None, sr_factor=None):
        if mol is None:
            mol = self.mol
        if dm is None:
            dm = self.make_rdm1()
        if self._fusionrcg_path != "native":
            terms = _k_terms(mol, omega, lr_factor, sr_factor)
            if len(terms) == 1:
                # one operator: possibly the K built along with the last J
                om, f = terms[0]
                vk = self._fusionrcg_paired.take(_DensityKey(mol, dm, hermi, om))
                if vk is not None:
                    logger.debug(self, "FusionRCG: K built with the preceding J")
                    return vk if f == 1.0 else vk * f
        return self.get_jk(mol, dm, hermi, False, True, omega, lr_factor, sr_factor)[1]


def _k_terms(mol, omega, lr_factor, sr_factor):
    """[(omega, factor)] of ``lr_factor K[erf] + sr_factor K[erfc]`` (GPU4PySCF's
    convention; a factor None is 0): one plain-Coulomb term when erf + erfc = 1
    makes the two equal.  Without factors: K of ``omega`` itself (PySCF's sign
    convention), factor 1."""
    omega = float(mol.omega if omega is None else omega)
    if lr_factor is None and sr_factor is None:
        return [(omega, 1.0)]
    w = abs(omega)
    lr = 0.0 if lr_factor is None else float(lr_factor)
    sr = 0.0 if sr_factor is None else float(sr_factor)
    if w == 0 or lr == sr:
        if w == 0 and lr_factor is not None and sr_factor is not None and lr != sr:
            raise ValueError(f"lr_factor ({lr}) and sr_factor ({sr}) differ, but omega = 0 has no "
                             "long- and short-range parts: give a nonzero omega, or equal factors")
        return [(0.0, lr if lr_factor is not None else sr)]
    return [(om, f) for om, f in ((w, lr), (-w, sr)) if f != 0]
