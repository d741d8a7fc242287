"""Side passes: the pairmap contracted stage as generated bra and ket passes.

A levels kernel with ``ctr='pairmap'`` stops after the primitive stage and
writes each quartet's accumulators; the side passes then run the graph's bra
steps on each ket column of a quartet's accumulators and its ket steps on each
row of the result, each a straight-line function of one vector, with the
half-transformed block staged in shared memory.
"""
from __future__ import annotations

from .. import ir, pairmaps
from .emit import _num, _prelude

#: Side passes: threads per block, and the shared memory a block stages its
#: quartets' half-transformed blocks in (two such blocks fit an SM).
PASS_THREADS = 128
PASS_SHARED_BYTES = 96 * 1024
PASS_QUARTETS_MAX = 32


def pass_dims(program: ir.Program) -> tuple[int, int, int, int]:
    """(bra rows, bra starts, ket starts, ket rows) of the side passes."""
    rcg = program.rcg
    if rcg is None:
        raise ValueError(f'{program.name}: the program carries no graph to take side passes from')
    return len(rcg.bra_final), len(rcg.bra_start), len(rcg.ket_start), len(rcg.ket_final)


def _pass_stride(program: ir.Program) -> int:
    """Doubles between two quartets' half-transformed blocks in shared
    memory: odd, so that the ket pass's lanes (one quartet each) read
    distinct banks."""
    nbf, _, nks, _ = pass_dims(program)
    return nbf * nks | 1


def pass_quartets(program: ir.Program) -> int:
    """Quartets one block of the side passes takes (0: not one fits)."""
    return min(PASS_QUARTETS_MAX, PASS_SHARED_BYTES // (8 * _pass_stride(program)))


def pass_shared_bytes(program: ir.Program) -> int:
    return 8 * _pass_stride(program) * pass_quartets(program)


def pass_cost(program: ir.Program) -> dict:
    """Static cost of one quartet's side passes, as pairmaps.PairProducts.cost
    counts it: multiply-adds (a side's graph terms once per vector it runs on)
    and device-memory bytes (the accumulators read, the blocks written)."""
    nbf, nbs, nks, nkf = pass_dims(program)
    terms = {side: sum(len(t) for _, t in pairmaps.side_nodes(program.rcg, side)) for side in ('bra', 'ket')}
    return dict(fma=terms['bra'] * nks + terms['ket'] * nbf, bytes=8 * (nbs * nks + nbf * nkf))


def _side_function(program: ir.Program, side: str, fname: str) -> list:
    """Lines of ``fname(in, istride, rx, ry, rz, out, ostride)``: one side's
    contracted steps (pairmaps.side_nodes) on the start values ``in[u *
    istride]``, with pair vector (rx, ry, rz), into the final rows
    ``out[row * ostride]`` (pairmaps.final_rows)."""
    rcg = program.rcg
    start, finals = (rcg.bra_start, rcg.bra_final) if side == 'bra' else (rcg.ket_start, rcg.ket_final)
    axis = dict(zip(ir.AB if side == 'bra' else ir.CD, ('rx', 'ry', 'rz')))
    L = [f'FR_INLINE void {fname}(const double* __restrict__ in, long istride, double rx, double ry,',
         '                        double rz, double* __restrict__ out, long ostride) {']
    names = {}
    for u, lab in enumerate(start):
        L.append(f'  const double s{u} = in[{u} * istride];')
        names[lab] = f's{u}'
    for k, (lab, terms) in enumerate(pairmaps.side_nodes(rcg, side)):
        parts = []
        for c, sym, child in terms:
            factor = names[child] if sym == ir.Sym.ONE else f'{axis[sym]} * {names[child]}'
            parts.append(factor if c == 1.0 else f'-{factor}' if c == -1.0 else f'{_num(c)} * {factor}')
        L.append(f'  const double t{k} = {" + ".join(parts)};'.replace('+ -', '- '))
        names[lab] = f't{k}'
    for lab, row in zip(finals, pairmaps.final_rows(rcg, side).tolist()):
        L.append(f'  out[{row} * ostride] = {names[lab]};')
    L.append('}')
    return L


def side_pass_source(program: ir.Program) -> tuple[str, str]:
    """(CUDA source, kernel name) of the side passes of a class.

    Arguments: ``acc`` ([quartet][bra start][ket start], the levels form's
    pairmap output), ``ab`` and ``cd`` (nq, 3) pair vectors, ``out`` (the
    blocks, [element][quartet] as the digestion reads them), ``nq``.  A block
    takes :func:`pass_quartets` quartets and :func:`pass_shared_bytes` of
    dynamic shared memory; the grid covers ``nq`` (no striding).  The bra
    pass's threads take consecutive accumulators of a quartet: loads that
    coalesce."""
    nbf, nbs, nks, nkf = pass_dims(program)
    qb, stride = pass_quartets(program), _pass_stride(program)
    if not qb:
        raise ValueError(f'{program.name}: one quartet of the side passes needs {8 * stride} bytes of shared '
                         f'memory, above {PASS_SHARED_BYTES}')
    name = f'fr_passes_{program.name}_{"cart" if program.cart else "sph"}'
    L = [_prelude()]
    L += _side_function(program, 'bra', f'{name}_bra')
    L += _side_function(program, 'ket', f'{name}_ket')
    L += [f'extern "C" __global__ void __launch_bounds__({PASS_THREADS}) {name}(',
          '    const double* __restrict__ acc, const double* __restrict__ ab, const double* __restrict__ cd,',
          '    double* __restrict__ out, int nq) {',
          '  extern __shared__ double fr_smem[];',
          f'  const long q0 = (long)blockIdx.x * {qb};',
          f'  for (int it = threadIdx.x; it < {qb * nks}; it += blockDim.x) {{',
          f'    const int ql = it / {nks}, v = it - ql * {nks};',
          '    const long q = q0 + ql;',
          f'    if (q < nq) {name}_bra(acc + q * {nbs * nks} + v, {nks}, '
          'ab[3 * q], ab[3 * q + 1], ab[3 * q + 2],',
          f'                           fr_smem + ql * {stride} + v, {nks});',
          '  }',
          '  __syncthreads();',
          '  // lanes take consecutive quartets of one row, so the stores of an element are contiguous',
          f'  for (int it = threadIdx.x; it < {nbf * qb}; it += blockDim.x) {{',
          f'    const int r = it / {qb}, ql = it - r * {qb};',
          '    const long q = q0 + ql;',
          f'    if (q < nq) {name}_ket(fr_smem + ql * {stride} + r * {nks}, 1, cd[3 * q], cd[3 * q + 1],',
          f'                           cd[3 * q + 2], out + (long)r * {nkf} * nq + q, nq);',
          '  }',
          '}']
    return '\n'.join(L) + '\n', name
