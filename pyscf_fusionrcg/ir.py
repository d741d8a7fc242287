"""Intermediate representation (IR) of one orchestrated ERI class program.

A :class:`Program` computes the contracted, normalised block ``(ab|cd)`` of one
shell quartet of angular-momentum class ``(la, lb, lc, ld)``.  It is straight-line
code over numbered temporaries ``t0 .. t{n_temps-1}`` in two stages.  Every
temporary is assigned by exactly one op (SSA), except accumulators, which are
zeroed at the start of the quartet and receive one ``Accumulate`` per
primitive quartet.  The op order inside each stage *is* the orchestrated
evaluation order: liveness (and hence register pressure) is a property of it.

Primitive stage (``Program.prim_ops``), executed once per primitive quartet
``(p_a, p_b, p_c, p_d)`` with exponents ``a, b, c, d``:

* ``Boys(dst, m, const)``:  ``t[dst] = const * PREF * G_m``.
  With ``zeta = a+b``, ``eta = c+d``, ``rho = zeta*eta/(zeta+eta)``,
  ``P = (aA+bB)/zeta``, ``Q = (cC+dD)/eta``, ``T = rho |P-Q|^2``::

      PREF = 2 pi^(5/2) / (zeta eta sqrt(zeta+eta))
             * exp(-a b/zeta |A-B|^2) * exp(-c d/eta |C-D|^2)

  and ``G_m`` is the Boys value of the operator (``omega`` as in PySCF's
  ``mol.omega``; ``theta = omega^2/(omega^2+rho)``)::

      omega == 0:  G_m = F_m(T)                                 (1/r)
      omega  > 0:  G_m = theta^(m+1/2) F_m(theta T)              (erf(omega r)/r)
      omega  < 0:  G_m = F_m(T) - theta^(m+1/2) F_m(theta T)     (erfc(|omega| r)/r)

  The recurrence coefficients below are the plain Coulomb ones in all three
  cases (the attenuation lives entirely in ``G_m``).  ``const`` carries
  PySCF's angular factor of s and p shells (1/sqrt(4 pi), sqrt(3/(4 pi)),
  see ``spherical.angular_factor``) for the four shells, so PREF needs none.
* ``LinComb(dst, terms, step)``: ``t[dst] = sum_k c_k * S_k * t[src_k]`` for
  ``terms = ((c_k, S_k, src_k), ...)``; ``c_k`` a float, ``S_k`` a
  :class:`Sym` (primitive symbols only in this stage).  The VRR builds each
  pair's angular momentum on one centre, so a program uses ``PA`` or ``PB``
  (and ``QC`` or ``QD``), never both.
* ``Accumulate(dst, src, weight)``: ``t[dst] += W * t[src]`` where ``W`` is the
  product of the four contraction coefficients of the primitive quartet,
  exactly as PySCF stores them in ``mol._env`` (i.e. including ``gto_norm``),
  for the contracted-function tuple being computed; with ``weight = c``
  (0..3) ``W`` is further multiplied by twice the exponent of shell ``c`` of
  the primitive quartet (the raised term of a nuclear derivative, see
  :class:`DerivProgram`).  ``weight = -1`` (plain integrals) adds nothing.

Contracted stage (``Program.ctr_ops``), once per contracted quartet:

* ``LinComb`` with contracted symbols (``AB_*``, ``CD_*``) for the horizontal
  recurrence, ``dst = src1 + AB_i * src2`` (or ``- AB_i`` when moving
  momentum from b to a; ``CD_i`` likewise), and with ``Sym.ONE`` and
  constant coefficients for Cartesian->spherical transforms.
* ``Output(src, index)``: ``block[index] = t[src]`` where ``index = (i, j, k, l)``
  indexes the array of shape ``Program.shape = (ni, nj, nk, nl)``: component
  ``i`` of shell a etc., in PySCF's order (Cartesian: ``xx, xy, xz, yy, yz, zz``
  ...; spherical: ``m = -l..l``, and ``x, y, z`` for p).  This equals
  ``mol.intor_by_shell('int2e_sph' | 'int2e_cart', (I, J, K, L))[i, j, k, l]``
  for shells with one contracted function.  For general contraction (nctr > 1)
  the program runs once per tuple ``(u, v, w, x)`` of contracted functions and
  its block goes to ``[u*ni + i, v*nj + j, w*nk + k, x*nl + l]``.
  Every block element is written exactly once.  A :class:`DerivProgram`'s
  index has one more, leading component.

Every op carries ``step`` (one of :data:`STEPS`) so reports can attribute the
live intermediates to the recurrence stage that produces them.

Storage: a Program keeps each stage as an :class:`OpTable` (struct of numpy
arrays; what the numpy interpreter and large-class generators want, since the
biggest classes have ~10^5 ops) and exposes the same ops as tuples of the
frozen dataclasses below through ``Program.prim_ops`` / ``Program.ctr_ops``
(built on first access; what a C printer wants).  Temporaries
``0 .. n_acc-1`` are the accumulators.  Symbols that
are per-primitive or per-quartet scalars are inputs, not temporaries, and are
not counted as intermediates.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property
from typing import Tuple, Union

import numpy as np


class Sym(enum.IntEnum):
    """Symbolic factors of LinComb terms (per primitive quartet unless noted).

    ``P, Q, W`` as in the module docstring, ``W = (zeta P + eta Q)/(zeta+eta)``;
    ``A, B, C, D`` are the shell centres.
    """
    ONE = 0
    PA_X = 1             # P - A
    PA_Y = 2
    PA_Z = 3
    WP_X = 4             # W - P
    WP_Y = 5
    WP_Z = 6
    QC_X = 7             # Q - C
    QC_Y = 8
    QC_Z = 9
    WQ_X = 10            # W - Q
    WQ_Y = 11
    WQ_Z = 12
    INV_2ZETA = 13       # 1/(2 zeta)
    INV_2ETA = 14        # 1/(2 eta)
    RHO_INV_2ZETA2 = 15  # rho/zeta * 1/(2 zeta)
    RHO_INV_2ETA2 = 16   # rho/eta * 1/(2 eta)
    INV_2ZETA_ETA = 17   # 1/(2 (zeta + eta))
    AB_X = 18            # A - B   (contracted stage, per shell quartet)
    AB_Y = 19
    AB_Z = 20
    CD_X = 21            # C - D   (contracted stage, per shell quartet)
    CD_Y = 22
    CD_Z = 23
    PB_X = 24            # P - B   (VRR building on centre B)
    PB_Y = 25
    PB_Z = 26
    QD_X = 27            # Q - D   (VRR building on centre D)
    QD_Y = 28
    QD_Z = 29

    @property
    def c_name(self) -> str:
        """Name used when printing C statements."""
        return self.name.lower()


#: Per-direction symbol triples, indexed by Cartesian direction 0/1/2.
PA = (Sym.PA_X, Sym.PA_Y, Sym.PA_Z)
PB = (Sym.PB_X, Sym.PB_Y, Sym.PB_Z)
WP = (Sym.WP_X, Sym.WP_Y, Sym.WP_Z)
QC = (Sym.QC_X, Sym.QC_Y, Sym.QC_Z)
QD = (Sym.QD_X, Sym.QD_Y, Sym.QD_Z)
WQ = (Sym.WQ_X, Sym.WQ_Y, Sym.WQ_Z)
AB = (Sym.AB_X, Sym.AB_Y, Sym.AB_Z)
CD = (Sym.CD_X, Sym.CD_Y, Sym.CD_Z)

#: Symbols usable in the primitive / contracted stage.
CONTRACTED_SYMS = frozenset((Sym.ONE,) + AB + CD)
PRIMITIVE_SYMS = frozenset(Sym) - CONTRACTED_SYMS | {Sym.ONE}

#: Step labels, in the order the stages run.  ``sph_a`` .. ``sph_d`` transform
#: the index of shell a .. d.
#: ``deriv`` combines the raised and lowered terms of a nuclear derivative
#: (:class:`DerivProgram`).
STEPS = ('boys', 'vrr', 'contract', 'hrr_ket', 'hrr_bra', 'deriv',
         'sph_a', 'sph_b', 'sph_c', 'sph_d', 'output')


@dataclass(frozen=True)
class Boys:
    dst: int
    m: int
    const: float
    step: str = 'boys'


@dataclass(frozen=True)
class LinComb:
    dst: int
    terms: Tuple[Tuple[float, Sym, int], ...]
    step: str


@dataclass(frozen=True)
class Accumulate:
    dst: int
    src: int
    step: str = 'contract'
    weight: int = -1            # shell whose 2 * exponent multiplies W; -1: none


@dataclass(frozen=True)
class Output:
    src: int
    index: Tuple[int, int, int, int]
    step: str = 'output'


Op = Union[Boys, LinComb, Accumulate, Output]


#: Highest shell angular momentum (i functions) the plugin accepts.
MAX_L = 6
#: Letters of the angular momenta, for class names such as 'gdfd'.
LETTERS = 'spdfghik'


def class_name(ls) -> str:
    """'gdfd' for (4, 2, 3, 2)."""
    return ''.join(LETTERS[l] for l in ls)


def parse_class(name: str):
    """(4, 2, 3, 2) for 'gdfd'."""
    return tuple(LETTERS.index(c) for c in name.lower())


def ncart(l: int) -> int:
    return (l + 1) * (l + 2) // 2


def nsph(l: int) -> int:
    return 2 * l + 1


#: OpTable.kind codes.
BOYS, LINCOMB, ACCUMULATE, OUTPUT = 0, 1, 2, 3


@dataclass(frozen=True, eq=False)
class OpTable:
    """One stage as arrays; op ``i`` (in evaluation order) is:

    * ``kind[i]``: BOYS / LINCOMB / ACCUMULATE / OUTPUT;
    * ``step[i]``: index into :data:`STEPS`;
    * ``dst[i]``: temporary written (the accumulator for ACCUMULATE; -1 for OUTPUT);
    * ``arg[i]``: Boys order m (BOYS), flat C-order block index (OUTPUT), the
      weight (ACCUMULATE: the shell whose doubled exponent weighs it, or -1),
      else -1;
    * ``level[i]``: wavefront level; every temporary op ``i`` reads is written
      at a smaller level (Boys values and accumulators count as level 0), so
      ops of one level are independent;
    * terms ``src/coef/sym[ptr[i]:ptr[i+1]]``: LINCOMB terms; ACCUMULATE and
      OUTPUT have one term ``(1.0, ONE, source)``; BOYS has none.
    """
    kind: np.ndarray
    step: np.ndarray
    dst: np.ndarray
    arg: np.ndarray
    level: np.ndarray
    ptr: np.ndarray
    src: np.ndarray
    coef: np.ndarray
    sym: np.ndarray

    def __len__(self):
        return len(self.kind)

    def sources(self):
        """(op index of each term, source temporary of each term)."""
        return np.repeat(np.arange(len(self.kind)), np.diff(self.ptr)), self.src


@dataclass(frozen=True, eq=False)
class Program:
    """Straight-line code for one class; see the module docstring."""
    la: int
    lb: int
    lc: int
    ld: int
    cart: bool
    n_temps: int
    n_acc: int
    boys_const: float
    prim: OpTable
    ctr: OpTable
    topology: str = ''
    #: the graph.RCG the program was orchestrated from (its contracted-stage
    #: phases are what pairmaps.py turns into pair matrices)
    rcg: object = None

    @property
    def ls(self) -> Tuple[int, int, int, int]:
        return (self.la, self.lb, self.lc, self.ld)

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        n = ncart if self.cart else nsph
        return tuple(n(l) for l in self.ls)

    @property
    def max_m(self) -> int:
        """Highest Boys order used: la+lb+lc+ld."""
        return sum(self.ls)

    @property
    def accumulators(self) -> Tuple[int, ...]:
        """Contracted temporaries zeroed per quartet (always 0 .. n_acc-1)."""
        return tuple(range(self.n_acc))

    @property
    def name(self) -> str:
        return ''.join('spdfghik'[l] for l in self.ls)

    @cached_property
    def prim_ops(self) -> Tuple[Op, ...]:
        return self._ops(self.prim)

    @cached_property
    def ctr_ops(self) -> Tuple[Op, ...]:
        return self._ops(self.ctr)

    def _ops(self, t: OpTable):
        shape = self.shape
        syms = list(Sym)
        out = []
        for i in range(len(t)):
            k, a, b = int(t.kind[i]), int(t.ptr[i]), int(t.ptr[i + 1])
            if k == BOYS:
                out.append(Boys(int(t.dst[i]), int(t.arg[i]), self.boys_const))
            elif k == ACCUMULATE:
                out.append(Accumulate(int(t.dst[i]), int(t.src[a]), weight=int(t.arg[i])))
            elif k == OUTPUT:
                idx = tuple(int(v) for v in np.unravel_index(int(t.arg[i]), shape))
                out.append(Output(int(t.src[a]), idx))
            else:
                terms = tuple((float(t.coef[j]), syms[t.sym[j]], int(t.src[j]))
                              for j in range(a, b))
                out.append(LinComb(int(t.dst[i]), terms, STEPS[t.step[i]]))
        return tuple(out)


@dataclass(frozen=True, eq=False)
class DerivProgram(Program):
    """Nuclear derivatives of the class's block on the shells ``centres``.

    Output shape ``(3 * len(centres),) + Program.shape``: component
    ``3 n + x`` is d/dX_x of the block, X the centre of shell ``centres[n]``
    (0..3 for a..d); PySCF's ``int2e_ip1`` is minus the component on shell a.
    The primitive stage accumulates the raised terms with ``Accumulate``
    weights (twice the differentiated shell's exponent) and the lowered ones
    plain; the contracted stage combines them (step ``deriv``) before the
    differentiated index is transformed.  ``ls`` is the differentiated class;
    the Boys orders reach ``sum(ls) + 1``.  See ``derivative.py``.
    """
    centres: Tuple[int, ...] = (0, 1, 2)

    @property
    def shape(self) -> Tuple[int, ...]:
        return (3 * len(self.centres),) + super().shape

    @property
    def max_m(self) -> int:
        return sum(self.ls) + 1


def c_statement(op: Op, temp: str = 't{}', out: str = None) -> str:
    """Print one op as a C/CUDA statement (doubles).

    ``temp`` formats a temporary number, ``out`` the block indices (default
    ``out[i][j][k][l]``, one more for a derivative program); Boys values are
    printed as ``pref * boys[m]``, the contraction weight as ``w`` and the
    exponent of shell a..d as ``ea``..``ed``.  Symbols print as their
    lower-case name (``pa_x``...).
    """
    def num(c):
        return repr(float(c))

    if isinstance(op, Boys):
        return f'{temp.format(op.dst)} = {num(op.const)} * pref * boys[{op.m}];'
    if isinstance(op, Accumulate):
        w = 'w' if op.weight < 0 else f'2.0 * e{"abcd"[op.weight]} * w'
        return f'{temp.format(op.dst)} += {w} * {temp.format(op.src)};'
    if isinstance(op, Output):
        if out is None:
            out = 'out' + ''.join(f'[{{{k}}}]' for k in range(len(op.index)))
        return f'{out.format(*op.index)} = {temp.format(op.src)};'
    parts = []
    for c, s, src in op.terms:
        f = [] if c == 1.0 else [num(c)]
        if s != Sym.ONE:
            f.append(s.c_name)
        f.append(temp.format(src))
        parts.append(' * '.join(f))
    return f'{temp.format(op.dst)} = ' + ' + '.join(parts) + ';'
