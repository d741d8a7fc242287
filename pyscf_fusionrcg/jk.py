"""J/K builds: the context one molecule keeps between builds, and the host digestion.

:class:`JKContext` owns what the builds of one molecule with one operator
share (Schwarz bounds, the host engine, the GPU's screened plan) and sends
each build to the GPU (:mod:`pyscf_fusionrcg.gpu_jk`) or to the host path;
MPI ranks can share either path's builds, and several GPUs of one process
the GPU path's (a :class:`GPUPart` each; :mod:`pyscf_fusionrcg.distributed`).
:func:`get_jk` is a one-off build.  On the host, each unique quartet
``(ij|kl)`` is computed once, as a whole angular-momentum class at a time
(``engine.quartet_blocks``), and digested for all 8 of its permutations with
vectorised NumPy (einsum on ``(n, di, dj, dk, dl)`` blocks, one ``bincount``
scatter per batch); the task lists and the digestion formulas are documented
in :mod:`pyscf_fusionrcg.screening`.  With ``Options.j_engine='on'`` the host
path's J, and the GPU path's J-only builds, come from the J engine instead
(:mod:`pyscf_fusionrcg.jdigest`, :mod:`pyscf_fusionrcg.jengine`).
Conventions are PySCF's::

    vj[k, l] = sum_ij (ij|kl) dm[j, i]        vk[i, l] = sum_jk (ij|kl) dm[j, k]
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from pyscf import gto
from pyscf.lib import logger

from pyscf_fusionrcg.distributed import (ProgramCost, Share, as_reducer, device_scope, on_device, on_parts,
                                         part_devices, split_tasks, summed)
from pyscf_fusionrcg.jdigest import batches, digest_j, engine_j, scatter
from pyscf_fusionrcg.options import DEVICES_NEED_GPU, Options, from_env
from pyscf_fusionrcg.screening import (ClassTasks, build_tasks, iter_tasks, on_gpu, schwarz_bounds,
                                       schwarz_candidates, shell_density_max, to_host)

#: Whether this process has said what the host path is for (:func:`cpu_engine`).
_host_path_noted = False


class LibcintBlocks:
    """Reference block provider on libcint (one ``intor_by_shell`` call per quartet).

    Same interface and layout as ``host.HostEngine``; used to cross-check the
    engine and the digestion independently of each other.
    """

    def __init__(self, mol, omega=0.0):
        self.mol = mol
        self.omega = float(omega)
        self._intor = "int2e_cart" if mol.cart else "int2e_sph"

    def quartet_blocks(self, shls):
        shls = np.asarray(shls).reshape(-1, 4)
        if len(shls) == 0:
            raise ValueError("quartet_blocks needs at least one quartet")
        with self.mol.with_range_coulomb(self.omega):
            return np.stack([self.mol.intor_by_shell(self._intor, tuple(int(x) for x in s))
                             for s in shls])


def engine_for_operator(make, mol, omega, *args):
    """``make(mol, omega, *args)``: an engine of the operator ``omega`` itself.
    The engines (``HostEngine``, ``GPUEngine``, ``GPUJEngine``) read omega = 0
    as ``mol.omega``; made while ``mol.omega`` is ``omega``, 0 means the full
    Coulomb operator even for a molecule with a range-separated default."""
    with mol.with_range_coulomb(omega):
        return make(mol, omega, *args)


def cpu_engine(mol, omega=0.0):
    """The host path of FusionRCG (the orchestrated recurrence programs on the CPU).

    The first engine of a process that ``mol``'s verbosity lets speak (PySCF's
    default does) says that the path is a reference for checks, far slower
    than PySCF's own J/K: 'cpu' reads like the way to run on a CPU.
    """
    global _host_path_noted
    from pyscf_fusionrcg.host import HostEngine
    if not _host_path_noted and mol.verbose >= logger.WARN:
        logger.warn(mol, "FusionRCG's host path (backend='cpu') is a reference for checks, far slower "
                    "than PySCF's own J/K; backend='auto' uses the GPU when there is one, else PySCF's J/K.")
        _host_path_noted = True
    return engine_for_operator(HostEngine, mol, omega)


def _gpu_get_jk():
    from gpucore import GPUUnavailableError, gpu_available, unavailable_reason
    if not gpu_available():
        raise GPUUnavailableError(
            f"FusionRCG backend='gpu' needs a CUDA GPU: {unavailable_reason()}")
    try:
        from pyscf_fusionrcg.gpu_jk import get_jk_gpu
    except ImportError as exc:
        raise GPUUnavailableError(
            f"FusionRCG's GPU J/K (pyscf_fusionrcg.gpu_jk) cannot be loaded: {exc}") from exc
    return get_jk_gpu


def mol_fingerprint(mol) -> int:
    """A hash of what the integrals depend on: atoms, basis, exponents and
    coefficients, geometry and the Cartesian/spherical choice."""
    return hash((mol._atm.tobytes(), mol._bas.tobytes(),
                 mol._env[gto.PTR_ENV_START:].tobytes(), bool(mol.cart)))


#: Why a communicator and ``Options.devices`` do not go together.
COMM_OR_DEVICES = ("devices= shares the GPU path's builds over the GPUs of one process; with comm= each "
                   "rank takes one GPU (docs/distributed.md): give one or the other")
#: Why builds with PySCF's own J/K (no usable GPU with backend='auto') refuse a communicator.
NATIVE_NOT_SHARED = ("comm= shares FusionRCG's J/K builds; with no usable GPU backend='auto' falls back "
                     "to PySCF's own J/K, which it cannot share: use backend='cpu' (the host path) or 'gpu'")


def check_sharing(path, options, comm):
    """Refuse what the builds of ``path`` ('cpu', 'gpu', or 'native': PySCF's
    own J/K) cannot share: GPUs (``options.devices``) on the host path, GPUs
    and a communicator at once, a communicator for PySCF's own J/K."""
    if options.devices is not None and path == "cpu":
        raise ValueError(DEVICES_NEED_GPU)
    if comm is not None and options.devices is not None:
        raise ValueError(COMM_OR_DEVICES)
    if comm is not None and path == "native":
        raise ValueError(NATIVE_NOT_SHARED)


#: The share of the free GPU memory a plan may take: the rest is left to the
#: builds' blocks and to the SCF (docs/routing.md).
PLAN_MEMORY_SHARE = 0.6


class GPUPart:
    """One GPU's part of a context's GPU builds: its ``device`` (None: the
    GPU current at each build), its :class:`~pyscf_fusionrcg.distributed.Share`
    of every class, its ``options`` (progress bars on the first part of rank
    0 alone), and what it keeps on its GPU between builds: the basis, the J
    engine and its share of the screened plan (screened whole by every part,
    which keeps and filters its own share of each class)."""

    def __init__(self, mol, omega, device, share, options):
        self.mol, self.omega = mol, omega
        self.device, self.share, self.options = device, share, options
        self.plan = None            # a gpu_jk.JKPlan
        self._basis = self._j_engine = None

    @property
    def basis(self):
        """The molecule's basis on this part's GPU (:class:`~pyscf_fusionrcg.launch.DeviceBasis`)."""
        if self._basis is None:
            from pyscf_fusionrcg.launch import DeviceBasis
            self._basis = DeviceBasis(self.mol)
        return self._basis

    def j_engine(self):
        """The GPU path's J engine on this part's GPU (``launch.GPUJEngine``),
        for its J-only builds with ``options.j_engine='on'``; made the first
        time, with the part's GPU current."""
        if self._j_engine is None:
            from pyscf_fusionrcg.launch import GPUJEngine
            self._j_engine = engine_for_operator(GPUJEngine, self.mol, self.omega)
        return self._j_engine


def _plan_memory(parts) -> int:
    """What each part's plan may take: ``PLAN_MEMORY_SHARE`` of the free
    memory of its GPU, shared by the parts on that GPU; the least of the parts'."""
    import cupy
    limits = []
    for device, n in Counter(part.device for part in parts).items():
        with device_scope(device):
            free = cupy.cuda.runtime.memGetInfo()[0] + cupy.get_default_memory_pool().free_bytes()
        limits.append(int(PLAN_MEMORY_SHARE * free / n))
    return min(limits)


def _free_pools(parts):
    """Give the free blocks of CuPy's memory pool back on the parts' GPUs."""
    import cupy
    for device in {part.device for part in parts}:
        with device_scope(device):
            cupy.get_default_memory_pool().free_all_blocks()


class JKContext:
    """What the J/K builds of one molecule with one operator keep between builds.

    One context per (geometry and basis, ``omega``), as GPU4PySCF keeps one
    ``_VHFOpt`` per molecule: the Schwarz bounds, the host engine
    (``backend='cpu'``) and, on each GPU that serves it (:meth:`gpu_parts`),
    the basis on the device and the plan of screened quartets that the
    builds of an SCF reuse (:meth:`get_jk`).  ``options`` (default
    :func:`~pyscf_fusionrcg.options.from_env`) is fixed for the context's life,
    so a kept plan always matches the builds it serves.  ``keep_plan=False``
    screens every GPU build's own density instead (one-off builds).
    ``engine`` and ``q_cond`` replace the host engine and the bounds
    (cross-checks against libcint).  ``comm``: an mpi4py communicator (or a
    :class:`~pyscf_fusionrcg.distributed.Reducer`) whose ranks share the
    builds, each rank's GPU builds on one GPU; ``options.devices``: the GPUs
    of this process that share the GPU builds (:meth:`gpu_parts`,
    :mod:`pyscf_fusionrcg.distributed`).
    """

    def __init__(self, mol, omega=None, backend="cpu", options=None, engine=None, q_cond=None,
                 keep_plan=True, comm=None):
        if backend not in ("cpu", "gpu"):
            raise ValueError(f"backend must be 'cpu' or 'gpu', not {backend!r}")
        self.options = options or from_env()
        check_sharing(backend, self.options, comm)
        self.mol = mol
        self.omega = float(mol.omega if omega is None else omega)
        self.backend = backend
        self.fingerprint = mol_fingerprint(mol)
        self.keep_plan = keep_plan
        self._engine = engine
        self._j_engine = None
        self._q_cond = q_cond
        if backend == "gpu" and self.options.j_engine == "on":
            logger.info(mol, "FusionRCG: j_engine='on' serves the GPU path's J-only builds; its J+K "
                        "builds use the J/K kernels")
        self.reducer = as_reducer(comm)
        self._parts = None          # the GPU parts, made by the first GPU build
        self.streams = False        # True once a plan proved too large: every build streams

    def serves(self, mol, omega) -> bool:
        """True when this context is the one for ``mol`` and the operator ``omega``."""
        return self.omega == float(omega) and self.fingerprint == mol_fingerprint(mol)

    @property
    def q_cond(self):
        """Schwarz bounds of the operator (:func:`~pyscf_fusionrcg.screening.schwarz_bounds`)."""
        if self._q_cond is None:
            self._q_cond = schwarz_bounds(self.mol, self.omega)
        return self._q_cond

    @property
    def engine(self):
        """The block provider of the host path (default :func:`cpu_engine`)."""
        if self._engine is None:
            self._engine = cpu_engine(self.mol, self.omega)
        return self._engine

    @property
    def j_engine(self):
        """The host path's J engine on :attr:`engine`
        (:class:`~pyscf_fusionrcg.jengine.HostJEngine`), for ``options.j_engine='on'``."""
        if self._j_engine is None:
            from pyscf_fusionrcg.jengine import HostJEngine
            self._j_engine = HostJEngine(self.engine)
        return self._j_engine

    @property
    def plan(self):
        """The first GPU part's kept ``gpu_jk.JKPlan`` (its share of the
        screened quartets; the whole plan when one part serves the builds);
        None before a GPU build, or when the builds stream."""
        return self._parts[0].plan if self._parts else None

    def gpu_parts(self) -> list:
        """The :class:`GPUPart` of each GPU that shares the GPU builds, made at
        the first one (:func:`~pyscf_fusionrcg.distributed.part_devices`): one
        per GPU of ``options.devices``; else one, on this rank's GPU where
        ranks share the builds, or on the GPU current at each build.  Part
        ``i`` of ``n`` on rank ``r`` of ``size`` takes part ``r n + i`` of
        ``size n`` of every class, by :class:`~pyscf_fusionrcg.distributed.ProgramCost`."""
        if self._parts is None:
            ranks = self.reducer
            devices = part_devices(self.options.devices, ranks)
            n = len(devices)
            quiet = self.options.replace(progress=False)
            self._parts = [GPUPart(self.mol, self.omega, device,
                                   Share(ranks.rank * n + i, ranks.size * n, ProgramCost(self.mol, class_overhead=0)),
                                   self.options if ranks.rank == 0 and i == 0 else quiet)
                           for i, device in enumerate(devices)]
        return self._parts

    def get_jk(self, dm, hermi=1, with_j=True, with_k=True, direct_scf_tol=1e-13):
        """``(vj, vk)`` of ``dm``, (nao, nao) or stacked (n, nao, nao) (a list of
        matrices is stacked), shaped as ``dm`` and NumPy or CuPy as ``dm``;
        None for the one not asked."""
        dm = _density_array(self.mol, dm)
        if not (with_j or with_k):
            return None, None
        if self.backend == "gpu":
            return self._gpu_jk(dm, hermi, with_j, with_k, direct_scf_tol)
        return self._host_jk(dm, hermi, with_j, with_k, direct_scf_tol)

    def _host_jk(self, dm, hermi, with_j, with_k, direct_scf_tol):
        if on_gpu(dm):
            import cupy
            vs = self._host_jk(to_host(cupy.asarray(dm)), hermi, with_j, with_k, direct_scf_tol)
            return tuple(None if v is None else cupy.asarray(v) for v in vs)
        dm = np.asarray(dm)
        if np.iscomplexobj(dm):
            # The integrals are real: J and K are linear in dm, so do both parts.
            jr, kr = self._host_jk(dm.real, 0, with_j, with_k, direct_scf_tol)
            ji, ki = self._host_jk(dm.imag, 0, with_j, with_k, direct_scf_tol)
            return (jr + 1j * ji if with_j else None, kr + 1j * ki if with_k else None)
        shape = dm.shape
        dms = dm.reshape(-1, shape[-2], shape[-1]).astype(np.float64, copy=False)
        ranks = self.reducer
        dms = ranks.broadcast(dms)
        progress = self.options.progress and ranks.rank == 0
        cost = ProgramCost(self.mol)

        def share(j, k):
            """This rank's share of the quartets a J and/or K build reads."""
            tasks = build_tasks(self.mol, dms, self.omega, direct_scf_tol, self.q_cond, j, k)
            return split_tasks(tasks, ranks.rank, ranks.size, cost)
        if with_j and self.options.j_engine == "on":
            # J and K from task lists screened each for the blocks it reads
            vj = digest_j(self.mol, dms, share(True, False), self.j_engine, progress)
            vk = None
            if with_k:
                vk = digest_tasks(self.mol, dms, hermi, share(False, True), self.engine, False, True, progress)[1]
        else:
            vj, vk = digest_tasks(self.mol, dms, hermi, share(with_j, with_k), self.engine, with_j, with_k,
                                  progress)
        vj, vk = ranks.sum(vj), ranks.sum(vk)
        return (None if vj is None else vj.reshape(shape),
                None if vk is None else vk.reshape(shape))

    def _gpu_jk(self, dm, hermi, with_j, with_k, direct_scf_tol):
        """Each GPU part's build of its share (:meth:`gpu_parts`), of rank 0's
        density (every part screens the same), summed over the parts onto the
        density's GPU and over the ranks.  J-only builds with
        ``options.j_engine='on'`` go through the J engine
        (:func:`~pyscf_fusionrcg.jdigest.engine_j`); the others through
        ``gpu_jk.get_jk_gpu``, on the kept plan restricted to the density's own
        blocks when there is one (:meth:`_keep_plans`), else on the classes
        screened on the GPU as the build reaches them."""
        mol, omega, ranks = self.mol, self.omega, self.reducer
        if with_j and not with_k and self.options.j_engine == "on":
            return self._engine_j(ranks.broadcast(dm), direct_scf_tol), None
        get_jk_gpu = _gpu_get_jk()
        import cupy
        parts, q_cond = self.gpu_parts(), self.q_cond      # made before the parts' threads
        host_in = not on_gpu(dm)
        dms = cupy.asarray(ranks.broadcast(dm))
        shape = dms.shape
        dms = dms.reshape(-1, shape[-2], shape[-1])
        dcond, planned = self._plan_for(parts, dms, direct_scf_tol)

        def build(part):
            d, block_max = on_device(dms, part.device), on_device(dcond, part.device)
            if planned:
                tasks = part.plan.restricted(block_max, with_j, with_k)
            else:
                tasks = iter_tasks(mol, d, omega, direct_scf_tol, q_cond, with_j, with_k, xp=cupy,
                                   block_max=block_max)
            # a part's plan holds its share already; streamed classes are cut as they come
            return get_jk_gpu(mol, d, hermi, with_j, with_k, omega, tasks, part.options, basis=part.basis,
                              share=None if planned else part.share)
        built = on_parts(parts, build)
        out = [ranks.sum(summed([b[n] for b in built], dms.device.id)) for n in (0, 1)]
        out = [None if v is None else v.reshape(shape) for v in out]
        return tuple(to_host(v) if host_in and v is not None else v for v in out)

    def _engine_j(self, dm, direct_scf_tol):
        """J alone through each GPU part's J engine
        (:func:`~pyscf_fusionrcg.jdigest.engine_j`), summed as :meth:`_gpu_jk`
        sums: from the part's kept plan restricted to the blocks J reads where
        the engine runs on the GPU, plans are kept (:meth:`_keep_plans`) and
        the density is real (its plan is read once a build), else from the
        density screened for J anew and cut by the part's share."""
        mol, omega, parts, q_cond = self.mol, self.omega, self.gpu_parts(), self.q_cond
        with device_scope(parts[0].device):
            on_the_gpu = getattr(parts[0].j_engine(), "xp", np) is not np    # NumPy: an emulated engine
        planned, dcond = False, None
        if on_the_gpu and self.keep_plan and dm.dtype.kind != "c":     # else no plan to read
            import cupy
            dms = cupy.asarray(dm)
            dcond, planned = self._plan_for(parts, dms.reshape(-1, dms.shape[-2], dms.shape[-1]), direct_scf_tol)

        def build_j(part):
            tasks = None
            if planned:
                kept = part.plan.restricted(on_device(dcond, part.device), True, False)
                tasks = (ClassTasks(c.key, c.nctr, c.quartets) for c in kept)
            return engine_j(mol, on_device(dm, part.device), part.j_engine(), omega, direct_scf_tol, q_cond,
                            part.options.progress, None if planned else part.share, tasks)
        vj = on_parts(parts, build_j)
        return self.reducer.sum(summed(vj, dm.device.id if on_gpu(dm) else None))

    def _plan_for(self, parts, dms, direct_scf_tol):
        """``(dcond, planned)`` of a build of the CuPy densities ``dms`` (nset,
        nao, nao): their shell blocks' maxima, on the GPU once per build, and
        whether the build runs on the parts' kept plans (never for a context
        made with ``keep_plan=False``; else :meth:`_keep_plans`)."""
        dcond = shell_density_max(self.mol, dms)
        return dcond, self.keep_plan and self._keep_plans(parts, dcond, direct_scf_tol)

    def _keep_plans(self, parts, dcond, direct_scf_tol) -> bool:
        """Whether a build runs on the parts' kept plans (each part's share of
        the same screened quartets), each restricted to the quartets of the density's own shell
        blocks, whose maxima are ``dcond``
        (:meth:`~pyscf_fusionrcg.gpu_jk.JKPlan.restricted`: the quartets
        screening them would keep, in the plan's order): while the plan covers
        the density, and for a density far smaller than the plan's bound (an
        SCF's density change) when screening it anew would look at
        ``PLAN_RESTRICT_SHARE`` of the screened count or more.  False for every
        build once a plan did not fit in ``PLAN_MEMORY_SHARE`` of the free
        memory of a GPU (shared by its parts; the least over the ranks) or
        the molecule has more shells than a plan indexes (such builds stream
        their classes).  New plans are screened for the density's largest
        element when there are none, the threshold changed or the density
        outgrew them.  One decision for every part and rank: all cut the
        same chunks."""
        from pyscf_fusionrcg.gpu_jk import PLAN_MAX_SHELLS, PLAN_RESTRICT_SHARE, JKPlan, PlanTooLarge
        mol = self.mol
        if self.streams:
            return False
        if mol.nbas > PLAN_MAX_SHELLS:
            logger.info(mol, "FusionRCG: %d shells are more than a plan indexes (%d); this geometry's "
                        "builds stream their classes", mol.nbas, PLAN_MAX_SHELLS)
            self.streams = True
            return False
        dmax = float(dcond.max()) if dcond.size else 0.0
        plan = parts[0].plan
        if plan is None or plan.tol != direct_scf_tol or dmax > plan.bound:
            for part in parts:
                part.plan = None    # free the old plans' arrays before screening again
            max_bytes = self.reducer.minimum(_plan_memory(parts))
            q_cond = self.q_cond

            def screen(part):
                part.plan = JKPlan.screen(mol, dmax, self.omega, direct_scf_tol, q_cond, part.options, max_bytes,
                                          part.basis, part.share)
            try:
                on_parts(parts, screen)
            except PlanTooLarge as err:
                for part in parts:
                    part.plan = None
                _free_pools(parts)
                logger.info(mol, "FusionRCG: %s; this geometry's builds stream their classes instead", err)
                self.streams = True
                return False
            plan = parts[0].plan
        return (plan.covers(dmax)
                or schwarz_candidates(plan.pair_bounds, dmax, direct_scf_tol) >= PLAN_RESTRICT_SHARE * plan.screened)


def _density_array(mol, dm):
    """``dm`` as one NumPy or CuPy array (a list of matrices stacked), with a
    clear error unless it is (nao, nao) or (n, nao, nao) for ``mol``."""
    if isinstance(dm, (list, tuple)):
        if on_gpu(dm):
            import cupy
            dm = cupy.stack([cupy.asarray(d) for d in dm])
        else:
            dm = np.asarray(dm)
    elif not hasattr(dm, "shape"):
        dm = np.asarray(dm)
    nao = mol.nao_nr()
    if dm.ndim not in (2, 3) or tuple(dm.shape[-2:]) != (nao, nao):
        raise ValueError(f"the density must be (nao, nao) or (n, nao, nao) with nao = {nao} for this "
                         f"molecule and basis, not of shape {tuple(dm.shape)}")
    return dm


def get_jk(mol, dm, hermi=1, with_j=True, with_k=True, omega=None, backend="cpu",
           direct_scf_tol=1e-13, engine=None, q_cond=None, options=None):
    """J and K matrices like ``pyscf.scf.hf.get_jk``, computed by FusionRCG.

    ``dm``: (nao, nao) or stacked (n, nao, nao) (e.g. UHF's alpha/beta).
    ``hermi=1`` assumes hermitian densities (K from half the work); any other
    value treats them as general.  ``omega``: None takes ``mol.omega``; > 0 the
    long-range erf, < 0 the short-range erfc operator (PySCF's convention).
    ``backend``: 'cpu' (the host path) or 'gpu'.  ``engine``: a block provider
    for the host path (default: the host engine); ``q_cond``: cached
    :func:`~pyscf_fusionrcg.screening.schwarz_bounds`.  Returns ``(vj, vk)``
    shaped like ``dm`` (NumPy or CuPy as ``dm``), None for the one not asked.
    A one-off build: for repeated builds of one molecule (an SCF) keep a
    :class:`JKContext`, whose GPU builds reuse one screened plan.
    """
    context = JKContext(mol, omega, backend, options, engine, q_cond, keep_plan=False)
    return context.get_jk(dm, hermi, with_j, with_k, direct_scf_tol)


def digest_tasks(mol, dms, hermi, tasks, engine, with_j=True, with_k=True, progress=Options.progress):
    """J and K (nset, nao, nao) of NumPy ``dms`` from a task list and a block provider.

    The reference consumer of :func:`~pyscf_fusionrcg.screening.build_tasks`:
    blocks of one class are scaled by their degeneracy and scattered for all
    8 permutations, in batches of at most
    :data:`~pyscf_fusionrcg.jdigest.BATCH_DOUBLES` block doubles.  A build that
    takes longer than :data:`~pyscf_fusionrcg.options.PROGRESS_DELAY_S` shows a progress bar over the
    quartets on stderr, unless ``progress`` is off (the host path takes
    minutes where PySCF takes seconds).
    """
    dm_j = dms + dms.transpose(0, 2, 1) if with_j else None
    # K(D) for hermitian D is Kh + Kh.T; otherwise Kh[D] + Kh[D.T].T.
    dm_k = None
    if with_k:
        dm_k = dms if hermi == 1 else np.concatenate((dms, dms.transpose(0, 2, 1)))
    jh = np.zeros(dms.shape) if with_j else None
    kh = np.zeros(dm_k.shape) if with_k else None
    ao_loc = mol.ao_loc
    for shls, degeneracy in batches(tasks, ao_loc, "FusionRCG host J/K", progress):
        g = engine.quartet_blocks(shls)
        g *= degeneracy[:, None, None, None, None]
        idx = [ao_loc[shls[:, x], None] + np.arange(g.shape[x + 1]) for x in range(4)]
        if with_j:
            _digest_j(g, idx, dm_j, jh)
        if with_k:
            _digest_k(g, idx, dm_k, kh)
    vj = jh + jh.transpose(0, 2, 1) if with_j else None
    vk = None
    if with_k:
        nset = len(dms)
        vk = (kh[:nset] + kh[nset:].transpose(0, 2, 1) if hermi != 1
              else kh + kh.transpose(0, 2, 1))
    return vj, vk


def _gather(dm, ix, iy):
    """Shell blocks ``dm[s, ix[n], iy[n]]`` -> (nset, n, dx, dy)."""
    return dm[:, ix[:, :, None], iy[:, None, :]]


def _digest_j(g, idx, dm_sym, jh):
    """Jh[ab] += g.D[cd] and Jh[cd] += g.D[ab] with D symmetrised (8-fold J)."""
    ia, ib, ic, id_ = idx
    n, da, db, dc, dd = g.shape
    gm = g.reshape(n, da * db, dc * dd)
    nset = len(dm_sym)
    d_ab = _gather(dm_sym, ia, ib).reshape(nset, n, da * db)
    d_cd = _gather(dm_sym, ic, id_).reshape(nset, n, dc * dd)
    j_ab = np.einsum("npq,snq->snp", gm, d_cd).reshape(nset, n, da, db)
    j_cd = np.einsum("npq,snp->snq", gm, d_ab).reshape(nset, n, dc, dd)
    scatter(jh, [(ia, ib, j_ab), (ic, id_, j_cd)])


def _digest_k(g, idx, dm, kh):
    """The four exchange terms of the (ij|kl) orderings with i from the bra's left."""
    ia, ib, ic, id_ = idx
    k_ad = np.einsum("nabcd,snbc->snad", g, _gather(dm, ib, ic))
    k_bd = np.einsum("nabcd,snac->snbd", g, _gather(dm, ia, ic))
    k_ac = np.einsum("nabcd,snbd->snac", g, _gather(dm, ib, id_))
    k_bc = np.einsum("nabcd,snad->snbc", g, _gather(dm, ia, id_))
    scatter(kh, [(ia, id_, k_ad), (ib, id_, k_bd), (ia, ic, k_ac), (ib, ic, k_bc)])
