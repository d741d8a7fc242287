"""The variant model: everything besides the program that changes a class's kernel.

A :class:`Variant` names the storage tier of the temporaries, the operator,
the contraction shape and how many contraction tuples a work item takes, the
form in which the ops run, how the contracted stage runs and whether the
kernel digests its blocks; :func:`kernel_name` names the text it emits.
Tiers and forms are described in :mod:`pyscf_fusionrcg.codegen`.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from .. import ir

TIERS = ('register', 'shared', 'warp', 'global')
FORMS = ('straight', 'table', 'levels')
#: How the contracted stage runs: the program's ops, or (levels form, one
#: contraction tuple) as pair matrices after the kernel (pyscf_fusionrcg.pairmaps)
CTR_MODES = ('ops', 'pairmap')

#: Words per op (header and terms) a levels kernel reserves registers for,
#: unless an op of the class is longer (:func:`level_op_words`).
LEVEL_OP_WORDS = 7
#: Accumulators one thread may hold for several contracted-function tuples
#: (general contraction): tuples are grouped while group * n_acc <= this, and
#: at most GROUP_MAX of them (the op stream's tuple field has 4 bits).
GROUP_ACC_MAX = 128
GROUP_MAX = 16


def omega_kind(omega: float) -> int:
    """0 for 1/r, 1 for erf (omega > 0), -1 for erfc (omega < 0)."""
    return 0 if omega == 0 else (1 if omega > 0 else -1)


@dataclass(frozen=True)
class Variant:
    """Everything besides the program that changes the emitted code."""
    tier: str = 'register'
    omega_kind: int = 0
    nctr: tuple = (1, 1, 1, 1)
    group: int = 1          # contracted-function tuples per work item
    form: str = 'straight'
    ctr: str = 'ops'        # CTR_MODES; 'pairmap': the kernel writes the accumulators
    digest: bool = False    # the kernel digests each block into J and K (digest.cuh)

    def __post_init__(self):
        if self.tier not in TIERS:
            raise ValueError(f'tier must be one of {TIERS}, not {self.tier!r}')
        if (self.form not in FORMS or (self.tier == 'register' and self.form != 'straight')
                or (self.tier == 'warp' and self.form != 'levels')
                or (self.form == 'levels' and self.tier not in ('warp', 'global'))):
            raise ValueError(f'form {self.form!r} is not available for the {self.tier} tier')
        if prod(self.nctr) % self.group:
            raise ValueError('group must divide the number of contraction tuples')
        if self.ctr not in CTR_MODES:
            raise ValueError(f'ctr must be one of {CTR_MODES}, not {self.ctr!r}')
        if self.ctr == 'pairmap' and (self.form != 'levels' or prod(self.nctr) != 1 or self.digest):
            raise ValueError("ctr='pairmap' needs the warp or global tier's levels form, one "
                             "contraction tuple and no digestion; use ctr='ops' here")
        if self.digest and (self.tier != 'register' or prod(self.nctr) != 1):
            raise ValueError('only the register tier with one contraction tuple digests its blocks '
                             'in the ERI kernel')

    @property
    def n_groups(self) -> int:
        return prod(self.nctr) // self.group


def tuples_per_thread(program: ir.Program, nctr) -> int:
    """Largest divisor ``g <= GROUP_MAX`` of the tuple count with ``g * n_acc <= GROUP_ACC_MAX``.

    Tuples of one work item share the primitive stage (the expensive part), so
    grouping saves work; the cap keeps the extra accumulators affordable.
    """
    nt = prod(nctr)
    n_acc = max(1, program.n_acc)
    return max(g for g in range(1, nt + 1)
               if nt % g == 0 and g <= GROUP_MAX and (g == 1 or g * n_acc <= GROUP_ACC_MAX))


def make_variant(program: ir.Program, tier='register', omega=0.0, nctr=(1, 1, 1, 1),
                 form=None, ctr='ops') -> Variant:
    """Variant for a class; ``form`` defaults to straight (register) / levels
    (warp, global) / table (shared)."""
    nctr = tuple(int(n) for n in nctr)
    form = form or {'register': 'straight', 'shared': 'table'}.get(tier, 'levels')
    return Variant(tier, omega_kind(omega), nctr, tuples_per_thread(program, nctr), form, ctr)


def kernel_name(program: ir.Program, variant: Variant) -> str:
    """Unique per emitted text: table kernels are shared by classes of one max_m."""
    w = {0: 'c', 1: 'lr', -1: 'sr'}[variant.omega_kind]
    n = ''.join(str(x) for x in variant.nctr)
    tail = (f'{variant.tier}_{w}_n{n}_g{variant.group}{"_pm" if variant.ctr == "pairmap" else ""}'
            f'{"_dg" if variant.digest else ""}')
    cls = f'{program.name}_{"cart" if program.cart else "sph"}'
    # a derivative program: its class's name, other outputs (and, in the op-stream
    # forms, the exponent-weighted weights of the centres)
    kind = (f'deriv_{"".join("abcd"[c] for c in program.centres)}' if isinstance(program, ir.DerivProgram)
            else 'eri')
    if variant.form in ('table', 'levels'):
        # the text depends on the class only through block offsets of tuples
        # (and, for levels, through words per op beyond the usual 7)
        words = level_op_words(program) if variant.form == 'levels' else LEVEL_OP_WORDS
        wide = f'_w{words}' if words != LEVEL_OP_WORDS else ''
        return (f'fr_{kind}_{variant.form}_m{program.max_m}{wide}'
                f'{"_" + cls if prod(variant.nctr) > 1 else ""}_{tail}')
    return f'fr_{kind}_{cls}_{tail}'


def level_op_words(program: ir.Program) -> int:
    """Words per op a levels kernel reserves registers for (header and terms):
    7, or more where an op has more than 6 terms (the spherical transform of
    l = 6); part of the kernel text and name."""
    most = max(int(np.diff(t.ptr).max(initial=0)) for t in (program.prim, program.ctr))
    return max(LEVEL_OP_WORDS, 1 + most)
