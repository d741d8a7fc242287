"""The J engine's digestion, in the engine's array module, and J-only builds through it.

:func:`digest_j` adds each unique quartet's two J blocks (a J engine's
``quartet_j``: :class:`~pyscf_fusionrcg.jengine.HostJEngine` on the host,
``launch.GPUJEngine`` on a GPU) into J with the 8-fold degeneracy of the task
lists of :func:`~pyscf_fusionrcg.screening.build_tasks`.  Its arithmetic (the
symmetrised density, the degeneracy, the scatter into the rows of both pairs)
runs in the engine's array module ``xp`` (NumPy for the host engine, CuPy for
the GPU's), one implementation for both paths.  :func:`engine_j` is a whole
J-only build through a J engine, as ``JKContext`` routes the GPU path's builds
with ``Options.j_engine='on'``: the density screened and J digested in the
engine's module (on the device for the GPU's engine), J returned NumPy or CuPy
as the density came.  :func:`batches` and :func:`scatter` also serve the host
path's J/K digestion (:func:`pyscf_fusionrcg.jk.digest_tasks`).
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from pyscf_fusionrcg.options import PROGRESS_DELAY_S, Options
from pyscf_fusionrcg.screening import array_module, build_tasks, on_gpu, to_host

#: Doubles of integral blocks digested per batch (bounds the scratch memory).
BATCH_DOUBLES = 1 << 21


def batches(tasks, ao_loc, desc, progress):
    """``(quartets, degeneracies)`` of a task list, class by class in batches
    of at most :data:`BATCH_DOUBLES` block doubles; a progress bar over the
    quartets after :data:`~pyscf_fusionrcg.options.PROGRESS_DELAY_S` unless
    ``progress`` is off."""
    total = sum(len(t) for t in tasks) if isinstance(tasks, (list, tuple)) else None    # else read once
    with tqdm(total=total, desc=desc, unit="quartet", unit_scale=True,
              delay=PROGRESS_DELAY_S, leave=False, disable=not progress) as bar:
        for t in tasks:
            blk = np.prod([ao_loc[s + 1] - ao_loc[s] for s in to_host(t.quartets[:1])[0]])
            step = max(1, BATCH_DOUBLES // int(blk))
            degeneracy = t.degeneracy
            for i0 in range(0, len(t), step):
                shls = t.quartets[i0:i0 + step]
                yield shls, degeneracy[i0:i0 + step]
                bar.update(len(shls))


def scatter(out, pieces):
    """``out[s, ix, iy] += v`` for every ``(ix, iy, v)``, v shaped (nset, n, dx, dy),
    in ``out``'s array module (the AO indices may be NumPy)."""
    xp = array_module(out)
    nset, nao, _ = out.shape
    size = nao * nao
    flat = xp.concatenate([(xp.asarray(ix)[:, :, None] * nao + xp.asarray(iy)[:, None, :]).ravel()
                           for ix, iy, _ in pieces])
    sets = xp.arange(nset)[:, None] * size
    w = xp.concatenate([v.reshape(nset, -1) for _, _, v in pieces], axis=1)
    out += xp.bincount((flat[None, :] + sets).ravel(), weights=w.ravel(),
                       minlength=nset * size).reshape(out.shape)


def digest_j(mol, dms, tasks, j_engine, progress=Options.progress):
    """J (nset, nao, nao) of ``dms`` from a task list through a two-sided J
    engine: each unique quartet's two J blocks of the symmetrised density,
    scaled by the quartet's degeneracy and added to both pairs' rows, as
    :func:`~pyscf_fusionrcg.jk.digest_tasks` does with the integral blocks.
    Runs in the engine's array module (``j_engine.xp``, NumPy when it has
    none) and returns J there."""
    if "ket" not in j_engine.sides:
        raise ValueError("the task lists hold each quartet once: their J needs the two-sided J engine")
    xp = getattr(j_engine, "xp", np)
    dms = xp.asarray(dms)
    dm_j = dms + dms.transpose(0, 2, 1)
    jh = xp.zeros(dms.shape)
    ao_loc = mol.ao_loc
    for shls, degeneracy in batches(tasks, ao_loc, "FusionRCG J engine", progress):
        shls = to_host(shls)    # the AO offsets and the kernels' orientation are made on the host
        blocks = j_engine.quartet_j(shls, dm_j)
        degeneracy = xp.asarray(degeneracy)[None, :, None, None]
        pieces = []
        for side, (x, y) in (("bra", (0, 1)), ("ket", (2, 3))):
            blk = blocks[side] * degeneracy
            pieces.append((ao_loc[shls[:, x], None] + np.arange(blk.shape[2]),
                           ao_loc[shls[:, y], None] + np.arange(blk.shape[3]), blk))
        scatter(jh, pieces)
    return jh + jh.transpose(0, 2, 1)


def engine_j(mol, dm, j_engine, omega=0.0, direct_scf_tol=1e-13, q_cond=None, progress=Options.progress,
             share=None, tasks=None):
    """J of ``dm`` ((nao, nao) or (n, nao, nao), NumPy or CuPy) through a J
    engine, shaped as ``dm`` and NumPy or CuPy as ``dm``: the task lists of
    the density screened for J in the engine's array module (:func:`build_tasks`
    with its ``xp``: on the device for the GPU's engine, in the same order as
    the host path's), digested by :func:`digest_j` there.  A complex density
    is built as its real and imaginary parts.  ``share``: a
    :class:`~pyscf_fusionrcg.distributed.Share`, whose part of each class
    alone is digested (J of a build shared by ranks or GPUs).  ``tasks``: the
    screened quartets (ClassTasks, any iterable, read once) instead of
    screening here, for a real density (a kept plan restricted to it)."""
    xp = getattr(j_engine, "xp", np)
    if dm.dtype.kind == "c":
        if tasks is not None:
            raise ValueError("a complex density is built as two real ones: screen it here (tasks=None)")
        args = (j_engine, omega, direct_scf_tol, q_cond, progress, share)
        return engine_j(mol, dm.real, *args) + 1j * engine_j(mol, dm.imag, *args)
    host_in = not on_gpu(dm)
    shape = dm.shape
    dms = xp.asarray(dm, dtype=np.float64).reshape(-1, shape[-2], shape[-1])
    if tasks is None:
        tasks = build_tasks(mol, dms, omega, direct_scf_tol, q_cond, True, False, xp=xp)
    if share is not None:
        tasks = list(share(tasks))
    vj = digest_j(mol, dms, tasks, j_engine, progress).reshape(shape)
    return to_host(vj) if host_in else vj
