"""The J engine's kernels: a :class:`~pyscf_fusionrcg.jengine.JProgram` as CUDA.

One thread per shell quartet, the register tier's straight form (one C
statement per op on plain locals, in the program's order).  The quartet
function runs the four primitive loops of the class kernels
(:func:`.emit.primitive_loops`), then the J program's primitive stage, whose
accumulations read the quartet's per-primitive pair densities::

    bra side:  a_e += cab(u, v) * rcd[(pc * npd + pd) * n_f + f] * t[src]
    ket side:  a_f += ccd(w, x) * rab[(pa * npb + pb) * n_e + e] * t[src]

``cab(u, v) = ca[u, pa] cb[v, pb]`` is the bra pair's primitive weight for
its contracted functions ``(u, v)``, and ``rcd`` holds ``D^_f(c_pc, d_pd) =
sum_{w, x} cc[w, pc] cd[x, pd] D~_f(c_w, d_x)``: the ket pair's density with
the ket's contraction coefficients folded in (jengine's module docstring), so
that the bra's accumulators sum over every ket function at once; the ket side
likewise.  With general contraction the work item holds one set of a side's
accumulators per contracted-function pair of that side (``na * nb`` for the
bra), sharing the primitive stage.  After the loops each side's contracted
stage runs once per such pair and writes its J block.

Output layout (the kernel's ``out``): ``out[e * nq + q]``, ``e`` the flat
C-order index of the bra's J block ``(na*di, nb*dj)`` for ``e < n_bra``, then
of the ket's ``(nc*dk, nd*dl)`` (sides of the program only): consecutive
threads write consecutive addresses, as the class kernels do.

The kernels are named apart (``fr_j_<class>_...``) so that no J/K or
derivative kernel's text changes.
"""
from __future__ import annotations

from math import prod

import numpy as np

from .. import ir
from .emit import (_SIGNATURE, _expr, _prelude, _quartet_call, _used_syms, CLOSE_LOOPS, PAIR_VECTORS,
                   primitive_loops)
from .geometry import BLOCK

#: Accumulators (all contracted-function pairs of both sides) one thread may hold.
J_ACC_MAX = 256


def j_block_dims(prog, side, nctr):
    """(functions x components) of a side's J block: (n1 * d1, n2 * d2)."""
    ncomp = ir.ncart if prog.cart else ir.nsph
    k = 0 if side == 'bra' else 2
    return tuple(nctr[k + i] * ncomp(prog.ls[k + i]) for i in (0, 1))


def j_block_sizes(prog, nctr):
    """{side: elements of its J block} for the sides of ``prog``, in order."""
    return {side: prod(j_block_dims(prog, side, nctr)) for side in prog.sides}


def j_kernel_name(prog, omega_kind: int, nctr) -> str:
    """``fr_j_<class>_<cart|sph>_<builds>_<sides>_register_<op>_n<nctr>``."""
    w = {0: 'c', 1: 'lr', -1: 'sr'}[omega_kind]
    sides = ''.join(s[0] for s in prog.sides)
    return (f'fr_j_{prog.name}_{"cart" if prog.cart else "sph"}_{"".join(prog.builds)}_{sides}_register_{w}'
            f'_n{"".join(str(n) for n in nctr)}')


def j_quartet_function(prog, omega_kind: int, nctr, fname: str) -> str:
    """The ``__host__ __device__`` per-quartet function of a J program.

    Arguments as the class kernels' quartet functions (:func:`.emit.quartet_function`:
    centres, exponents, ``[nctr][nprim]`` coefficients, primitive counts,
    ``omega``), then ``rab`` and ``rcd``, the quartet's per-primitive pair
    densities ``[pa][pb][e]`` and ``[pc][pd][f]`` (see the module docstring),
    and ``out`` (element ``e`` at ``out[e * ostride]``).
    """
    nctr = tuple(int(n) for n in nctr)
    tuples = {'bra': prod(nctr[:2]), 'ket': prod(nctr[2:])}
    n_acc = sum(tuples[s] * prog.n_start(s) for s in prog.sides)
    if n_acc > J_ACC_MAX:
        raise ValueError(f'{prog.name}: {n_acc} accumulators a thread are more than the J kernel '
                         f'holds ({J_ACC_MAX})')
    syms = _used_syms(prog)
    P, NA = prog.prim, prog.n_acc
    side_of = np.full(NA, -1)
    for k, side in enumerate(prog.sides):
        r = prog.acc_range(side)
        side_of[r.start:r.stop] = k
    prim_temp = np.zeros(prog.n_temps, dtype=bool)
    prim_temp[P.dst[P.kind != ir.ACCUMULATE]] = True

    def ref(t, g=0):
        if t < NA:
            return f'a{g}_{t}'
        return f'p{t}' if prim_temp[t] else f'c{g}_{t}'

    L = [f'FR_INLINE void {fname}(',
         _SIGNATURE.split(', int t0')[0] + ', double omega,',
         '    const double* __restrict__ rab, const double* __restrict__ rcd,',
         '    double* __restrict__ out, long ostride) {',
         '  using namespace fusionrcg;',
         '  (void)omega;']
    L += PAIR_VECTORS
    for k, side in enumerate(prog.sides):
        r = prog.acc_range(side)
        L += [f'  double {ref(t, g)} = 0.0;' for g in range(tuples[side]) for t in r]

    def weights(side, pair, loops):
        """A side's primitive weight of each of its function pairs (u, v)."""
        (c1, c2), (n1, n2), (i1, i2) = pair, (nctr[:2] if side == 'bra' else nctr[2:]), loops
        return [f'const double w{side[0]}{g} = c{c1}[{g // n2} * np{c1} + {i1}] * '
                f'c{c2}[{g % n2} * np{c2} + {i2}];' for g in range(n1 * n2)]

    ab_lines = []
    if 'bra' in prog.sides:
        ab_lines += ['      ' + s for s in weights('bra', 'ab', ('ia', 'ib'))]
    if 'ket' in prog.sides:
        ab_lines.append(f'      const double* dab = rab + (ia * npb + ib) * {prog.n_start("bra")};')
    L += primitive_loops(syms, omega_kind, sum(prog.ls), prog.eri.boys_const, ab_lines)
    ind = '          '
    if 'ket' in prog.sides:
        L += [ind + s for s in weights('ket', 'cd', ('ic', 'id'))]
    if 'bra' in prog.sides:
        L.append(f'{ind}const double* dcd = rcd + (ic * npd + id) * {prog.n_start("ket")};')
    kinds, dsts, args, ptrs, srcs = (a.tolist() for a in (P.kind, P.dst, P.arg, P.ptr, P.src))
    coefs, symv, dens = P.coef.tolist(), P.sym.tolist(), prog.density.tolist()
    for i, kind in enumerate(kinds):
        a, b = ptrs[i], ptrs[i + 1]
        if kind == ir.ACCUMULATE:
            side = prog.sides[side_of[dsts[i]]]
            rho = dens[i] - prog.rho_range(side).start
            d = 'dcd' if side == 'bra' else 'dab'
            for g in range(tuples[side]):
                L.append(f'{ind}{ref(dsts[i], g)} += w{side[0]}{g} * {d}[{rho}] * {ref(srcs[a])};')
        elif kind == ir.BOYS:
            L.append(f'{ind}const double {ref(dsts[i])} = cpref * boys[{args[i]}];')
        else:
            L.append(f'{ind}const double {ref(dsts[i])} = '
                     f'{_expr(zip(coefs[a:b], symv[a:b], srcs[a:b]), ref)};')
    L += CLOSE_LOOPS
    if any(s in syms for s in ir.AB):
        L.append('  const double ab_x = abx, ab_y = aby, ab_z = abz;')
    if any(s in syms for s in ir.CD):
        L.append('  const double cd_x = cdx, cd_y = cdy, cd_z = cdz;')
    base = 0
    for side in prog.sides:
        L += _side_outputs(prog, side, nctr, base, ref)
        base += prod(j_block_dims(prog, side, nctr))
    L.append('}')
    return '\n'.join(L) + '\n'


def _side_outputs(prog, side, nctr, base, ref) -> list:
    """A side's contracted stage once per function pair, each writing its J
    block elements from ``base`` on."""
    C = prog.ctr_ops(side)
    ncomp = ir.ncart if prog.cart else ir.nsph
    k = 0 if side == 'bra' else 2
    d1, d2 = ncomp(prog.ls[k]), ncomp(prog.ls[k + 1])
    n1, n2 = nctr[k], nctr[k + 1]
    kinds, dsts, args, ptrs, srcs = (a.tolist() for a in (C.kind, C.dst, C.arg, C.ptr, C.src))
    coefs, symv = C.coef.tolist(), C.sym.tolist()
    L = []
    for g in range(n1 * n2):
        u, v = divmod(g, n2)

        def r(t, g=g):
            return ref(t, g)
        for i, kind in enumerate(kinds):
            a, b = ptrs[i], ptrs[i + 1]
            if kind == ir.OUTPUT:
                ii, jj = divmod(args[i], d2)
                e = base + (u * d1 + ii) * (n2 * d2) + v * d2 + jj
                L.append(f'  out[{e} * ostride] = {r(srcs[a])};')
            else:
                L.append(f'  const double {r(dsts[i])} = {_expr(zip(coefs[a:b], symv[a:b], srcs[a:b]), r)};')
    return L


def j_kernel_source(prog, omega_kind: int, nctr) -> tuple[str, str]:
    """(CUDA source, kernel name) of a J program's kernel (register tier,
    straight form; :data:`~.geometry.BLOCK` threads a block).

    Arguments: ``quartets`` (nq, 4) int32, ``nq``, ``shl`` and ``env`` as the
    class kernels', ``omega``, ``rho`` (the pair-density table) and
    ``rho_off`` (nq, 2) int64: quartet ``q`` reads ``rab`` at
    ``rho + rho_off[2q]`` and ``rcd`` at ``rho + rho_off[2q + 1]``; ``out``
    as in the module docstring.  The grid strides over the quartets.
    """
    name = j_kernel_name(prog, omega_kind, nctr)
    fn = f'{name}_quartet'
    # the class kernels' call, its last line (contraction tuple, out, scratch) the J function's
    call = _quartet_call(fn, '0', 'out + q, nq', '')[:-1] + [
        '        A[0], B[0], C[0], D[0], omega, rho + rho_off[2 * (long)q], rho + rho_off[2 * (long)q + 1],',
        '        out + q, nq);']
    L = [_prelude([sum(prog.ls)]), j_quartet_function(prog, omega_kind, nctr, fn),
         f'extern "C" __global__ void __launch_bounds__({BLOCK}) {name}(',
         '    const int* __restrict__ quartets, int nq, const int* __restrict__ shl,',
         '    const double* __restrict__ env, double omega, const double* __restrict__ rho,',
         '    const long* __restrict__ rho_off, double* __restrict__ out) {',
         '  for (long item = (long)blockIdx.x * blockDim.x + threadIdx.x; item < nq;',
         '       item += (long)gridDim.x * blockDim.x) {',
         '    const int q = (int)item;',
         *call,
         '  }',
         '}']
    return '\n'.join(L) + '\n', name
