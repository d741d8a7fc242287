"""Nuclear gradients of the two-electron energy from FusionRCG's derivative integrals.

The host path computes, for each screened unique shell quartet ``(ab|cd)``,
its derivatives on the centres of a, b and c (``HostEngine.derivative_blocks``,
programs of :mod:`pyscf_fusionrcg.derivative`); d/dD is minus their sum
(translational invariance).  The quartets come from
:func:`~pyscf_fusionrcg.screening.build_tasks`, one of the 8 orderings of each
unique quartet with its degeneracy, screened with :func:`derivative_bounds`.
Two consumers digest them:

* :func:`DerivativeContext.forces`: the two-electron gradient per atom
  straight from the blocks, no derivative matrix made: with the symmetrised
  densities ``D_s`` (``Dt`` their sum), each quartet adds
  ``deg * sum_abcd d/dX (ab|cd) G_abcd`` to the atom of each centre X, where
  ``G = 4 j Dt_ab Dt_cd - 2 k sum_s (D_s,ac D_s,bd + D_s,ad D_s,bc)`` is the
  sum of the 8 orderings' densities; this is the gradient of
  ``E = j/2 (ij|kl) Dt_ij Dt_kl - k/2 sum_s (ij|kl) D_s,ik D_s,jl``.
* :func:`DerivativeContext.jk`: PySCF's derivative matrices
  (``pyscf.grad.rhf.get_jk``: ``vj[x,i,j] = sum_kl d/dI_x (ij|kl) D[l,k]``,
  ``vk[x,i,l] = sum_jk d/dI_x (ij|kl) D[j,k]``, I the centre of i, which
  is minus libcint's int2e_ip1), scattered for the 8 orderings.

:class:`_FusionRCGGrad` puts both into PySCF's Gradients objects
(``fusionrcg(mf, backend='cpu').nuc_grad_method()``); see its docstring.
"""
from __future__ import annotations

import ctypes
from functools import partial

import numpy as np
from pyscf import gto, lib
from pyscf.lib import logger
from pyscf.scf import _vhf
from tqdm import tqdm

from pyscf_fusionrcg.jdigest import BATCH_DOUBLES, scatter
from pyscf_fusionrcg.jk import JKContext, _density_array, _gather, engine_for_operator
from pyscf_fusionrcg.options import PROGRESS_DELAY_S
from pyscf_fusionrcg.screening import build_tasks, schwarz_bounds, to_host

#: Doubles of derivative blocks per GPU batch (256 MiB): large launches, and
#: the digestion's temporaries stay a fraction of a GPU's memory.
_DEVICE_BATCH_DOUBLES = 1 << 25


def _array_module(backend):
    """NumPy for the host path, CuPy for the GPU's."""
    if backend == "gpu":
        import cupy
        return cupy
    return np


def derivative_bounds(mol, omega=0.0):
    """(nbas, nbas) bounds ``Q`` with ``|d/dX (ij|kl)| <= Q[i, j] Q[k, l]`` for
    X the centre of any of the four shells, for the operator of ``omega``.

    ``max(q, p, p.T)``: ``q`` the Schwarz bounds of the integrals, ``p[i, j] =
    sqrt(max |(d_x i j|d_x i j)|)`` those of the derivative on the first shell
    (libcint's int2e_ip1ip2 diagonal, as PySCF's gradients screen), since
    ``|(d_x i j|kl)| <= p[i, j] q[k, l]`` by Cauchy-Schwarz.
    """
    nbas = mol.nbas
    p = np.empty((nbas, nbas))
    libcvhf = _vhf.libcvhf
    ao_loc = mol.ao_loc_nr()
    with mol.with_range_coulomb(omega):
        libcvhf.CVHFnr_int2e_pp_q_cond(
            getattr(libcvhf, mol._add_suffix('int2e_ip1ip2')), lib.c_null_ptr(), p.ctypes,
            ao_loc.ctypes, mol._atm.ctypes, ctypes.c_int(mol.natm), mol._bas.ctypes,
            ctypes.c_int(nbas), mol._env.ctypes)
    return np.maximum(schwarz_bounds(mol, omega), np.maximum(p, p.T))


class DerivativeContext(JKContext):
    """What the derivative builds of one geometry and operator keep: the
    engine and :func:`derivative_bounds` (a :class:`~pyscf_fusionrcg.jk.JKContext`
    whose bounds hold for derivative integrals).  ``backend='gpu'`` takes the
    blocks from :class:`~pyscf_fusionrcg.launch.GPUEngine` and digests them
    into forces with CuPy on the device; :meth:`jk` brings them to the host."""

    def __init__(self, mol, omega=None, options=None, engine=None, backend="cpu"):
        super().__init__(mol, omega, backend, options, engine)

    @property
    def q_cond(self):
        if self._q_cond is None:
            self._q_cond = derivative_bounds(self.mol, self.omega)
        return self._q_cond

    @property
    def engine(self):
        """The block provider: the host engine, or on the GPU path a
        :class:`~pyscf_fusionrcg.launch.GPUEngine` of this operator."""
        if self._engine is None and self.backend == "gpu":
            from pyscf_fusionrcg.launch import GPUEngine
            self._engine = engine_for_operator(GPUEngine, self.mol, self.omega, self.options)
        return super().engine

    def _batches(self, dms, tol, with_j, with_k, what, one_centre=True, on_device=False):
        """(quartets, their degeneracy, derivative blocks) of the unique
        quartets that screening for the densities ``dms`` keeps, in batches
        of at most ``BATCH_DOUBLES`` doubles (``_DEVICE_BATCH_DOUBLES`` on
        the GPU); without ``one_centre``, none whose four shells sit on one
        atom.  ``on_device`` (GPU path): the densities are screened, and
        the quartets, degeneracies and blocks kept, on the device (CuPy);
        else all three are NumPy."""
        xp = _array_module(self.backend) if on_device else np
        tasks = build_tasks(self.mol, xp.asarray(dms), self.omega, tol, self.q_cond, with_j, with_k, xp=xp)
        ao_loc, atom = self.mol.ao_loc, xp.asarray(self.mol._bas[:, gto.ATOM_OF])
        gpu = self.backend == "gpu"
        blocks = (partial(self.engine.derivative_blocks, as_cupy=on_device) if gpu
                  else self.engine.derivative_blocks)
        batch = _DEVICE_BATCH_DOUBLES if gpu else BATCH_DOUBLES
        with tqdm(total=sum(len(t) for t in tasks), desc=f"FusionRCG {self.backend} {what}", unit="quartet",
                  unit_scale=True, delay=PROGRESS_DELAY_S, leave=False,
                  disable=not self.options.progress) as bar:
            for t in tasks:
                quartets, degeneracy = t.quartets.astype(np.intp), t.degeneracy
                if not one_centre:
                    keep = (atom[quartets] != atom[quartets[:, :1]]).any(axis=1)
                    quartets, degeneracy = quartets[keep], degeneracy[keep]
                    bar.update(len(t) - len(quartets))
                if not len(quartets):
                    continue
                blk = 9 * np.prod([ao_loc[s + 1] - ao_loc[s] for s in to_host(quartets[:1])[0]])
                step = max(1, batch // int(blk))
                for i0 in range(0, len(quartets), step):
                    shls = quartets[i0:i0 + step]
                    yield shls, degeneracy[i0:i0 + step], blocks(shls)
                    bar.update(len(shls))

    def forces(self, dms, j_factor=1.0, k_factor=1.0, tol=1e-13):
        """(natm, 3) gradient of the two-electron energy of the module
        docstring for the densities ``dms`` ((nao, nao) or (nset, nao, nao),
        NumPy or CuPy, symmetrised here): ``j_factor = 1, k_factor = 1/2`` for
        RHF's total density, ``1, 1`` for UHF's alpha and beta, ``0, k`` for a
        K term alone (a range-separated functional's long-range exchange).
        On the GPU path the screening, the contraction and the sums per atom
        run on the device, and the forces come to the host once."""
        mol = self.mol
        dms = to_host(_density_array(mol, dms)).astype(np.float64).reshape(-1, mol.nao, mol.nao)
        dms = (dms + dms.transpose(0, 2, 1)) * 0.5
        with_j, with_k = j_factor != 0, k_factor != 0
        if not (with_j or with_k):
            return np.zeros((mol.natm, 3))
        dt = dms.sum(axis=0, keepdims=True)
        xp = _array_module(self.backend)
        atom, ao_loc = xp.asarray(mol._bas[:, gto.ATOM_OF]), xp.asarray(mol.ao_loc)
        dms_x, dt_x = xp.asarray(dms), xp.asarray(dt)
        de = xp.zeros(mol.natm * 3)
        # screened for the spin densities and their sum (which J reads); a
        # quartet on one atom moves rigidly with it: its derivatives cancel
        batches = self._batches(np.concatenate([dms, dt]), tol, with_j, with_k, "forces",
                                one_centre=False, on_device=True)
        for shls, deg, g in batches:
            n = len(shls)
            ia, ib, ic, id_ = (ao_loc[shls[:, x], None] + xp.arange(g.shape[3 + x]) for x in range(4))
            gam = xp.zeros((n,) + g.shape[3:])
            if with_j:
                gam += (4 * j_factor) * xp.einsum('nab,ncd->nabcd', _gather(dt_x, ia, ib)[0],
                                                  _gather(dt_x, ic, id_)[0])
            if with_k:
                gam -= (2 * k_factor) * (
                    xp.einsum('snac,snbd->nabcd', _gather(dms_x, ia, ic), _gather(dms_x, ib, id_))
                    + xp.einsum('snad,snbc->nabcd', _gather(dms_x, ia, id_), _gather(dms_x, ib, ic)))
            gam *= xp.asarray(deg, dtype=np.float64)[:, None, None, None, None]
            f = xp.einsum('nkb,nb->nk', g.reshape(n, 9, -1), gam.reshape(n, -1)).reshape(n, 3, 3)
            f = xp.concatenate([f, -f.sum(axis=1, keepdims=True)], axis=1)   # d/dD
            rows = (atom[shls][:, :, None] * 3 + xp.arange(3)).ravel()
            de += xp.bincount(rows, weights=f.ravel(), minlength=mol.natm * 3)
        return to_host(de).reshape(mol.natm, 3)

    def jk(self, dm, with_j=True, with_k=True, tol=1e-13):
        """PySCF's derivative matrices (see the module docstring) of ``dm``
        ((nao, nao) or (nset, nao, nao)), each shaped ``dm.shape[:-2] + (3, nao,
        nao)``; None for the one not asked."""
        if not (with_j or with_k):
            return None, None
        mol = self.mol
        dm = _density_array(mol, dm)
        shape = dm.shape[:-2] + (3, mol.nao, mol.nao)
        dms = to_host(dm).astype(np.float64).reshape(-1, mol.nao, mol.nao)
        nset = len(dms)
        vj = np.zeros((nset * 3, mol.nao, mol.nao)) if with_j else None
        vk = np.zeros((nset * 3, mol.nao, mol.nao)) if with_k else None
        dsym = dms + dms.transpose(0, 2, 1)
        ao_loc = mol.ao_loc
        for shls, deg, g in self._batches(dms, tol, with_j, with_k, "derivative J/K"):
            g *= deg[:, None, None, None, None, None, None]
            dd = -g.sum(axis=1)
            da, db, dc = g[:, 0], g[:, 1], g[:, 2]
            idx = [ao_loc[shls[:, x], None] + np.arange(g.shape[3 + x]) for x in range(4)]
            if with_j:
                scatter(vj, _derivative_j(da, db, dc, dd, idx, dsym))
            if with_k:
                scatter(vk, _derivative_k(da, db, dc, dd, idx, dms))
        return (None if vj is None else vj.reshape(shape),
                None if vk is None else vk.reshape(shape))


def _pieces(terms, nset):
    """``scatter`` pieces of (row AOs, column AOs, (nset, n, 3, dx, dy)) terms,
    the 3 directions folded into the sets."""
    out = []
    for ix, iy, v in terms:
        v = v.transpose(0, 2, 1, 3, 4)
        out.append((ix, iy, v.reshape((nset * 3,) + v.shape[2:])))
    return out


def _derivative_j(da, db, dc, dd, idx, dsym):
    """``vj`` terms of the 8 orderings (``dsym = D + D.T``): [a,b] and [b,a]
    from the ket's density, [c,d] and [d,c] from the bra's."""
    ia, ib, ic, id_ = idx
    d_ab, d_cd = _gather(dsym, ia, ib), _gather(dsym, ic, id_)
    return _pieces([(ia, ib, np.einsum('nxabcd,sncd->snxab', da, d_cd)),
                    (ib, ia, np.einsum('nxabcd,sncd->snxba', db, d_cd)),
                    (ic, id_, np.einsum('nxabcd,snab->snxcd', dc, d_ab)),
                    (id_, ic, np.einsum('nxabcd,snab->snxdc', dd, d_ab))], len(dsym))


def _derivative_k(da, db, dc, dd, idx, dms):
    """``vk`` terms of the 8 orderings (i j|k l) -> vk[i, l] += d/dI (ij|kl) D[j, k]."""
    ia, ib, ic, id_ = idx
    terms = [(ia, id_, 'nxabcd,snbc->snxad', da, ib, ic), (ia, ic, 'nxabcd,snbd->snxac', da, ib, id_),
             (ib, id_, 'nxabcd,snac->snxbd', db, ia, ic), (ib, ic, 'nxabcd,snad->snxbc', db, ia, id_),
             (ic, ib, 'nxabcd,snda->snxcb', dc, id_, ia), (ic, ia, 'nxabcd,sndb->snxca', dc, id_, ib),
             (id_, ib, 'nxabcd,snca->snxdb', dd, ic, ia), (id_, ia, 'nxabcd,sncb->snxda', dd, ic, ib)]
    return _pieces([(r, c, np.einsum(e, g, _gather(dms, x, y))) for r, c, e, g, x, y in terms],
                   len(dms))


def fusionrcg_gradients(mf_grad, options, backend="cpu"):
    """``mf_grad``, a PySCF or GPU4PySCF Gradients object, with its
    two-electron derivative integrals from FusionRCG on ``backend``, 'cpu'
    (the host path) or 'gpu' (:class:`_FusionRCGGrad` for PySCF's classes,
    :class:`_FusionRCGGpu4pyscfGrad` for GPU4PySCF's); ``options`` the SCF's
    :class:`~pyscf_fusionrcg.options.Options`.  ``ValueError`` for a
    GPU4PySCF class without GPU4PySCF's per-atom hook."""
    if backend not in ("cpu", "gpu"):
        raise ValueError(f"backend must be 'cpu' or 'gpu', not {backend!r}")
    if isinstance(mf_grad, _FusionRCGGradBase):
        return mf_grad
    mixin = _FusionRCGGrad
    if is_gpu4pyscf(mf_grad):
        if not callable(getattr(mf_grad, "jk_energy_per_atom", None)):
            raise ValueError(f"FusionRCG serves GPU4PySCF's gradients through jk_energy_per_atom, which "
                             f"{type(mf_grad).__name__} lacks")
        mixin = _FusionRCGGpu4pyscfGrad
    return lib.set_class(mixin(mf_grad, options, backend), (mixin, mf_grad.__class__))


def is_gpu4pyscf(obj) -> bool:
    """True for GPU4PySCF's objects (their classes live in its modules)."""
    return type(obj).__module__.startswith("gpu4pyscf")


class _FusionRCGGradBase:
    """What both gradient mixins share: the options and backend, one
    :class:`DerivativeContext` per operator of the current geometry, and
    ``undo_fusionrcg()``."""

    __name_mixin__ = "FusionRCG"
    _keys = {"fusionrcg_options", "fusionrcg_backend"}

    def __init__(self, mf_grad, options, backend="cpu"):
        self.__dict__.update(mf_grad.__dict__)
        self.fusionrcg_options = options
        self.fusionrcg_backend = backend
        self._fusionrcg_contexts = {}

    def undo_fusionrcg(self):
        """The same object with its original class and its own derivative integrals."""
        obj = lib.view(self, lib.drop_class(self.__class__, _FusionRCGGradBase))
        for key in ("fusionrcg_options", "fusionrcg_backend", "_fusionrcg_contexts", "_fusionrcg_mode"):
            obj.__dict__.pop(key, None)
        return obj

    def reset(self, mol=None):
        self._fusionrcg_contexts = {}
        return super().reset(mol)

    def dump_flags(self, verbose=None):
        super().dump_flags(verbose)
        logger.info(self, "two-electron derivative integrals: FusionRCG %s",
                    "on the GPU" if self.fusionrcg_backend == "gpu" else "host path")
        return self

    def _fusionrcg_context(self, mol, omega):
        """The :class:`DerivativeContext` of this geometry and operator; a new
        geometry (a scanner) drops the others."""
        contexts = self._fusionrcg_contexts
        context = contexts.get(omega)
        if context is None or not context.serves(mol, omega):
            if any(not c.serves(mol, c.omega) for c in contexts.values()):
                contexts.clear()
            context = contexts[omega] = DerivativeContext(mol, omega, self.fusionrcg_options,
                                                          backend=self.fusionrcg_backend)
        return context

    def _fusionrcg_tol(self):
        tol = self.fusionrcg_options.direct_scf_tol
        return self.base.direct_scf_tol if tol is None else tol

    def _fusionrcg_forces(self, mol, dm, terms):
        """Sum of :meth:`DerivativeContext.forces` over ``terms``, [(omega,
        j_factor, k_factor)], logged with its time."""
        t0 = (logger.process_clock(), logger.perf_counter())
        forces = sum(self._fusionrcg_context(mol, omega).forces(dm, j, k, self._fusionrcg_tol())
                     for omega, j, k in terms)
        logger.timer(self, f"two-electron forces (FusionRCG {self.fusionrcg_backend})", *t0)
        return forces


#: What each of PySCF's own ``get_veff`` of the gradients does with J and K:
#: (unrestricted, Kohn-Sham), keyed by (module, class) of the Gradients class
#: that defines it.
_PYSCF_VEFF = {("pyscf.grad.rhf", "Gradients"): (False, False),
               ("pyscf.grad.uhf", "Gradients"): (True, False),
               ("pyscf.grad.rohf", "Gradients"): (True, False),
               ("pyscf.grad.rks", "Gradients"): (False, True),
               ("pyscf.grad.uks", "Gradients"): (True, True)}


class _FusionRCGGrad(_FusionRCGGradBase):
    """Derivative J/K from FusionRCG; everything else from the wrapped (PySCF) Gradients class.

    PySCF's gradient drivers get their two-electron part from ``get_veff``,
    which calls ``get_jk`` / ``get_j`` / ``get_k``: derivative matrices (3,
    nao, nao) per density, that ``grad_elec`` contracts with the density atom
    by atom; PySCF exposes no per-atom hook for that part.  So:

    * ``get_jk`` / ``get_j`` / ``get_k`` give those matrices from FusionRCG's
      derivative blocks (:meth:`DerivativeContext.jk`), for every caller
      (response and excited-state gradients included);
    * ``grad_elec``, when ``get_veff`` is one of PySCF's own (RHF, UHF,
      ROHF, RKS, UKS: :data:`_PYSCF_VEFF`, whose J/K factors
      :meth:`_fusionrcg_terms` knows), has ``get_veff`` leave the two-electron
      part out (its J/K calls see zeros) and hand it over as per-atom forces
      contracted straight from the blocks (:meth:`DerivativeContext.forces`),
      which ``extra_force`` adds: no derivative matrix is made.  Another
      ``get_veff`` gets the matrices.
    """

    def __init__(self, mf_grad, options, backend="cpu"):
        super().__init__(mf_grad, options, backend)
        self._fusionrcg_mode = None     # None, 'per_atom' (in grad_elec) or 'no_jk' (in its get_veff)

    def grad_elec(self, *args, **kwargs):
        self._fusionrcg_mode = "per_atom"
        try:
            return super().grad_elec(*args, **kwargs)
        finally:
            self._fusionrcg_mode = None

    def get_veff(self, mol=None, dm=None):
        """The wrapped ``get_veff``; in ``grad_elec`` and for PySCF's own
        (:data:`_PYSCF_VEFF`) without the two-electron part, which comes as
        per-atom forces tagged on the result (``fusionrcg_forces``)."""
        terms = self._fusionrcg_terms() if self._fusionrcg_mode == "per_atom" else None
        if terms is None:
            return super().get_veff(mol, dm)
        if mol is None:
            mol = self.mol
        if dm is None:
            dm = self.base.make_rdm1()
        self._fusionrcg_mode = "no_jk"
        try:
            vhf = super().get_veff(mol, dm)
        finally:
            self._fusionrcg_mode = "per_atom"
        return lib.tag_array(vhf, fusionrcg_forces=self._fusionrcg_forces(mol, dm, terms))

    def extra_force(self, atom_id, envs):
        forces = getattr(envs.get("vhf"), "fusionrcg_forces", None)
        extra = super().extra_force(atom_id, envs)
        return extra if forces is None else extra + forces[atom_id]

    def _fusionrcg_terms(self):
        """[(omega, j_factor, k_factor)] of the two-electron energy whose
        gradient the wrapped ``get_veff`` computes (see
        :meth:`DerivativeContext.forces`), or None when that is not one of
        PySCF's own."""
        mro = type(self).__mro__
        owner = next(c for c in mro[mro.index(_FusionRCGGrad) + 1:] if "get_veff" in vars(c))
        kind = _PYSCF_VEFF.get((owner.__module__, owner.__name__))
        if kind is None:
            return None
        unrestricted, kohn_sham = kind
        half = 1.0 if unrestricted else 0.5
        omega0 = float(self.mol.omega)
        if not kohn_sham:
            return [(omega0, 1.0, half)]
        mf = self.base
        ni = mf._numint
        if not ni.libxc.is_hybrid_xc(mf.xc):    # NumInt.is_hybrid_xc is new in PySCF 2.15
            return [(omega0, 1.0, 0.0)]
        omega, alpha, hyb = ni.rsh_and_hybrid_coeff(mf.xc, spin=self.mol.spin)
        terms = [(omega0, 1.0, half * hyb)]
        if omega != 0:
            terms.append((float(omega), 0.0, half * (alpha - hyb)))
        return terms

    def _fusionrcg_jk(self, mol, dm, omega, with_j, with_k):
        if mol is None:
            mol = self.mol
        if dm is None:
            dm = self.base.make_rdm1()
        if self._fusionrcg_mode == "no_jk":         # the forces come apart (get_veff)
            shape = np.shape(dm)[:-2] + (3, mol.nao, mol.nao)
            return (np.zeros(shape) if with_j else None, np.zeros(shape) if with_k else None)
        omega = float(mol.omega if omega is None else omega)
        t0 = (logger.process_clock(), logger.perf_counter())
        vj, vk = self._fusionrcg_context(mol, omega).jk(dm, with_j, with_k, self._fusionrcg_tol())
        logger.timer(self, f"derivative vj and vk (FusionRCG {self.fusionrcg_backend})", *t0)
        return vj, vk

    def get_jk(self, mol=None, dm=None, hermi=0, omega=None):
        """PySCF's ``(vj, vk)`` derivative matrices (``pyscf.grad.rhf.get_jk``)."""
        return self._fusionrcg_jk(mol, dm, omega, True, True)

    def get_j(self, mol=None, dm=None, hermi=0, omega=None):
        return self._fusionrcg_jk(mol, dm, omega, True, False)[0]

    def get_k(self, mol=None, dm=None, hermi=0, omega=None):
        return self._fusionrcg_jk(mol, dm, omega, False, True)[1]


class _FusionRCGGpu4pyscfGrad(_FusionRCGGradBase):
    """GPU4PySCF's Gradients with their two-electron part from FusionRCG.

    GPU4PySCF's ground-state gradients (RHF, UHF, RKS, UKS, range-separated
    functionals included) take that part per atom from one hook,
    ``jk_energy_per_atom(dm, j_factor, k_factor, omega)``: ``j_factor``
    times the gradient of the Coulomb energy minus ``k_factor`` times that of
    exchange, for one total density (exchange ``1/4 (ij|kl) D_ik D_jl``) or
    an alpha and beta pair (``1/2 sum_s``).  It maps onto
    :meth:`DerivativeContext.forces` with the exchange factor halved for one
    density.  Attenuated operators given as ``lr_factor``/``sr_factor`` stay
    GPU4PySCF's (its own kernel refuses them too).
    """

    def jk_energy_per_atom(self, dm=None, j_factor=1, k_factor=1, omega=None, lr_factor=None,
                           sr_factor=None, hermi=0, verbose=None):
        if lr_factor is not None or sr_factor is not None:
            return super().jk_energy_per_atom(dm, j_factor, k_factor, omega, lr_factor, sr_factor, hermi,
                                              verbose)
        if dm is None:
            dm = self.base.make_rdm1()
        mol = self.mol
        dms = _density_array(mol, dm).reshape(-1, mol.nao, mol.nao)
        if len(dms) > 2:
            raise ValueError(f"jk_energy_per_atom takes one density or an alpha and beta pair, not {len(dms)}")
        scale = 0.5 if len(dms) == 1 else 1.0
        omega = float(mol.omega if omega is None else omega)
        return self._fusionrcg_forces(mol, dms, [(omega, float(j_factor), float(k_factor) * scale)])
