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
  :class:`Sym` (primitive symbols only in this stage).
* ``Accumulate(dst, src)``: ``t[dst] += W * t[src]`` where ``W`` is the product
  of the four contraction coefficients of the primitive quartet, exactly as
  PySCF stores them in ``mol._env`` (i.e. including ``gto_norm``), for the
  contracted-function tuple being computed.

Contracted stage (``Program.ctr_ops``), once per contracted quartet:

* ``LinComb`` with contracted symbols (``AB_*``, ``CD_*``) for the horizontal
  recurrence, ``dst = src1 + AB_i * src2`` / ``CD_i``, and with ``Sym.ONE`` and
  constant coefficients for Cartesian->spherical transforms.
* ``Output(src, index)``: ``block[index] = t[src]`` where ``index = (i, j, k, l)``
  indexes the array of shape ``Program.shape = (ni, nj, nk, nl)``: component
  ``i`` of shell a etc., in PySCF's order (Cartesian: ``xx, xy, xz, yy, yz, zz``
  ...; spherical: ``m = -l..l``, and ``x, y, z`` for p).  This equals
  ``mol.intor_by_shell('int2e_sph' | 'int2e_cart', (I, J, K, L))[i, j, k, l]``
  for shells with one contracted function.  For general contraction (nctr > 1)
  the program runs once per tuple ``(u, v, w, x)`` of contracted functions and
  its block goes to ``[u*ni + i, v*nj + j, w*nk + k, x*nl + l]``.
  Every block element is written exactly once.

Every op carries ``step`` (one of :data:`STEPS`) so reports can attribute the
live intermediates to the recurrence stage that produces them.  Symbols that
are per-primitive or per-quartet scalars are inputs, not temporaries, and are
not counted as intermediates.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Tuple, Union


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

    @property
    def c_name(self) -> str:
        """Name used when printing C statements."""
        return self.name.lower()


#: Symbols usable in the primitive / contracted stage.
PRIMITIVE_SYMS = frozenset(s for s in Sym if s <= Sym.INV_2ZETA_ETA)
CONTRACTED_SYMS = frozenset({Sym.ONE, Sym.AB_X, Sym.AB_Y, Sym.AB_Z,
                             Sym.CD_X, Sym.CD_Y, Sym.CD_Z})
#: Per-direction symbol triples, indexed by Cartesian direction 0/1/2.
PA = (Sym.PA_X, Sym.PA_Y, Sym.PA_Z)
WP = (Sym.WP_X, Sym.WP_Y, Sym.WP_Z)
QC = (Sym.QC_X, Sym.QC_Y, Sym.QC_Z)
WQ = (Sym.WQ_X, Sym.WQ_Y, Sym.WQ_Z)
AB = (Sym.AB_X, Sym.AB_Y, Sym.AB_Z)
CD = (Sym.CD_X, Sym.CD_Y, Sym.CD_Z)

#: Step labels, in the order the stages run.  ``sph_a`` .. ``sph_d`` transform
#: the index of shell a .. d.
STEPS = ('boys', 'vrr', 'contract', 'hrr_ket', 'hrr_bra',
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


@dataclass(frozen=True)
class Output:
    src: int
    index: Tuple[int, int, int, int]
    step: str = 'output'


Op = Union[Boys, LinComb, Accumulate, Output]


def ncart(l: int) -> int:
    return (l + 1) * (l + 2) // 2


def nsph(l: int) -> int:
    return 2 * l + 1


@dataclass(frozen=True)
class Program:
    """Straight-line code for one class; see the module docstring."""
    la: int
    lb: int
    lc: int
    ld: int
    cart: bool
    n_temps: int
    prim_ops: Tuple[Op, ...]
    ctr_ops: Tuple[Op, ...]
    topology: str = ''

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
        """Contracted temporaries (zeroed per quartet), in first-use order."""
        return tuple(dict.fromkeys(op.dst for op in self.prim_ops
                                   if isinstance(op, Accumulate)))

    @property
    def name(self) -> str:
        return ''.join('spdfghik'[l] for l in self.ls)


def c_statement(op: Op, temp: str = 't{}',
                out: str = 'out[{0}][{1}][{2}][{3}]') -> str:
    """Print one op as a C/CUDA statement (doubles).

    ``temp`` formats a temporary number, ``out`` the four block indices;
    Boys values are printed as ``pref * boys[m]``, the contraction weight as
    ``w``.  Symbols print as their lower-case name (``pa_x``...).
    """
    def num(c):
        return repr(float(c))

    if isinstance(op, Boys):
        return f'{temp.format(op.dst)} = {num(op.const)} * pref * boys[{op.m}];'
    if isinstance(op, Accumulate):
        return f'{temp.format(op.dst)} += w * {temp.format(op.src)};'
    if isinstance(op, Output):
        return f'{out.format(*op.index)} = {temp.format(op.src)};'
    parts = []
    for c, s, src in op.terms:
        f = [] if c == 1.0 else [num(c)]
        if s != Sym.ONE:
            f.append(s.c_name)
        f.append(temp.format(src))
        parts.append(' * '.join(f))
    return f'{temp.format(op.dst)} = ' + ' + '.join(parts) + ';'
