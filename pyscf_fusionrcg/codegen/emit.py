"""C++ emission: the per-quartet function, the class kernels and the host source.

The per-quartet function is ``__host__ __device__`` and takes plain pointers,
so the very same text builds with g++ (:func:`host_source`, used by the CPU
tests) and with NVRTC or nvcc (:func:`emit_kernel_source`).
"""
from __future__ import annotations

from functools import lru_cache
from math import prod

import numpy as np

from .. import boys as boys_values, ir
from .encoding import (_SYM_SLOTS, LEVEL_ROW_BITS, Table, _block_strides, _pair_slot0, _reserved,
                       _weight_slot0, weighted_accumulates)
from .geometry import block_size, min_blocks
from .statements import _ACC, _BOYS, _OUTPUT, _ZERO, LEVEL_OPS_PER_LANE, assign_slots, sequence
from .variant import Variant, kernel_name, level_op_words


def _num(c: float) -> str:
    return repr(float(c))


#: C names of the symbols by value (an enum lookup per term is slow)
_SYM_C_NAMES = {int(s): s.c_name for s in ir.Sym}
_SYM_ONE = int(ir.Sym.ONE)


def _expr(terms, ref) -> str:
    """``c * sym * src`` terms (Python numbers) as a C sum."""
    out = []
    for c, s, src in terms:
        neg = c < 0
        mag = -c if neg else c
        f = [] if mag == 1.0 else [_num(mag)]
        if s != _SYM_ONE:
            f.append(_SYM_C_NAMES[s])
        f.append(ref(src))
        piece = ' * '.join(f)
        if not out:
            out.append(f'-{piece}' if neg else piece)
        else:
            out.append(f'{"-" if neg else "+"} {piece}')
    return ' '.join(out)


def _used_syms(program: ir.Program):
    syms = set()
    for t in (program.prim, program.ctr):
        syms.update(int(s) for s in np.unique(t.sym))
    syms.discard(int(ir.Sym.ONE))
    return {ir.Sym(s) for s in syms}


#: Symbols quartet_function knows how to compute.
_EMITTED_SYMS = set(ir.PA + ir.PB + ir.QC + ir.QD + ir.WP + ir.WQ + ir.AB + ir.CD) | {
    ir.Sym.INV_2ZETA, ir.Sym.INV_2ETA, ir.Sym.RHO_INV_2ZETA2, ir.Sym.RHO_INV_2ETA2,
    ir.Sym.INV_2ZETA_ETA}

_SIGNATURE = """\
    const double* __restrict__ ra, const double* __restrict__ rb,
    const double* __restrict__ rc, const double* __restrict__ rd,
    const double* __restrict__ ea, const double* __restrict__ eb,
    const double* __restrict__ ec, const double* __restrict__ ed,
    const double* __restrict__ ca, const double* __restrict__ cb,
    const double* __restrict__ cc, const double* __restrict__ cd,
    int npa, int npb, int npc, int npd, int t0, double omega,
    double* __restrict__ out, long ostride, volatile double* sp"""

_PAIRS_SIGNATURE = """,
    const unsigned* __restrict__ prim_pairs, int n_prim_pairs,
    const unsigned* __restrict__ ctr_pairs, int n_ctr_pairs,
    const double* __restrict__ coef, int n_acc"""
_PAIRS_ARGS = ', prim_pairs, n_prim_pairs, ctr_pairs, n_ctr_pairs, coef, n_acc'

_TABLE_SIGNATURE = """,
    const unsigned* __restrict__ prim_code, int prim_words,
    const unsigned* __restrict__ ctr_code, int ctr_words""" + _PAIRS_SIGNATURE
_TABLE_ARGS = ', prim_code, prim_words, ctr_code, ctr_words' + _PAIRS_ARGS

_LEVELS_SIGNATURE = """,
    const unsigned* __restrict__ prim_code, const int* __restrict__ prim_levels, int n_prim_levels,
    const unsigned* __restrict__ ctr_code, const int* __restrict__ ctr_levels, int n_ctr_levels""" + _PAIRS_SIGNATURE
_LEVELS_ARGS = ', prim_code, prim_levels, n_prim_levels, ctr_code, ctr_levels, n_ctr_levels' + _PAIRS_ARGS


def _stream_signature(form: str) -> tuple[str, str]:
    """(extra parameters, extra arguments) of the op-stream forms."""
    return {'table': (_TABLE_SIGNATURE, _TABLE_ARGS),
            'levels': (_LEVELS_SIGNATURE, _LEVELS_ARGS)}.get(form, ('', ''))


#: The pair vectors and squared distances every per-quartet function starts with.
PAIR_VECTORS = [
    '  const double abx = ra[0] - rb[0], aby = ra[1] - rb[1], abz = ra[2] - rb[2];',
    '  const double cdx = rc[0] - rd[0], cdy = rc[1] - rd[1], cdz = rc[2] - rd[2];',
    '  const double rab2 = abx * abx + aby * aby + abz * abz;',
    '  const double rcd2 = cdx * cdx + cdy * cdy + cdz * cdz;']
#: Closes the four primitive loops that :func:`primitive_loops` opens.
CLOSE_LOOPS = ['        }', '      }', '    }', '  }']


def primitive_loops(syms, omega_kind: int, mmax: int, boys_const: float, ab_lines=()) -> list:
    """The lines that open the four primitive loops (ia, ib, ic, id) and
    compute, per primitive quartet, the Boys values ``boys[0..mmax]`` of the
    operator, ``cpref = boys_const * pref`` and the symbols ``syms`` of
    ``ir.Sym`` (the loop body follows; :data:`CLOSE_LOOPS` ends it);
    ``ab_lines`` go into the bra pair's loop, after P."""
    L = ['  for (int ia = 0; ia < npa; ++ia) {',
         '    const double ai = ea[ia];',
         '    for (int ib = 0; ib < npb; ++ib) {',
         '      const double bi = eb[ib];',
         '      const double zeta = ai + bi, izeta = 1.0 / zeta;',
         '      const double kab_arg = ai * bi * izeta * rab2;',
         '      if (kab_arg > FR_EXP_CUTOFF) continue;',
         '      const double kab = exp(-kab_arg);',
         '      const double px = (ai * ra[0] + bi * rb[0]) * izeta;',
         '      const double py = (ai * ra[1] + bi * rb[1]) * izeta;',
         '      const double pz = (ai * ra[2] + bi * rb[2]) * izeta;',
         *ab_lines,
         '      for (int ic = 0; ic < npc; ++ic) {',
         '        const double ci = ec[ic];',
         '        for (int id = 0; id < npd; ++id) {',
         '          const double di = ed[id];',
         '          const double eta = ci + di, ieta = 1.0 / eta;',
         '          const double kcd_arg = ci * di * ieta * rcd2;',
         '          if (kcd_arg > FR_EXP_CUTOFF) continue;',
         '          const double qx = (ci * rc[0] + di * rd[0]) * ieta;',
         '          const double qy = (ci * rc[1] + di * rd[1]) * ieta;',
         '          const double qz = (ci * rc[2] + di * rd[2]) * ieta;',
         '          const double rze = fr_rsqrt(zeta + eta), ize = fr_recip_from_rsqrt(zeta + eta, rze);',
         '          const double rho = zeta * eta * ize;',
         '          const double pqx = px - qx, pqy = py - qy, pqz = pz - qz;',
         '          const double T = rho * (pqx * pqx + pqy * pqy + pqz * pqz);',
         '          const double pref = kTwoPi52 * izeta * ieta * rze * kab * exp(-kcd_arg);',
         f'          double boys[{mmax + 1}];',
         f'          boys_operator<{omega_kind}, {mmax}>(T, rho, omega, boys);',
         f'          const double cpref = {_num(boys_const)} * pref;']
    add = L.append
    S = ir.Sym
    for d, ax in enumerate('xyz'):
        if ir.WP[d] in syms or ir.WQ[d] in syms:
            add(f'          const double w{ax} = (zeta * p{ax} + eta * q{ax}) * ize;')
        for trip, expr in ((ir.PA, f'p{ax} - ra[{d}]'), (ir.PB, f'p{ax} - rb[{d}]'),
                           (ir.QC, f'q{ax} - rc[{d}]'), (ir.QD, f'q{ax} - rd[{d}]'),
                           (ir.WP, f'w{ax} - p{ax}'), (ir.WQ, f'w{ax} - q{ax}')):
            if trip[d] in syms:
                add(f'          const double {trip[d].c_name} = {expr};')
    if S.INV_2ZETA in syms or S.RHO_INV_2ZETA2 in syms:
        add('          const double inv_2zeta = 0.5 * izeta;')
    if S.INV_2ETA in syms or S.RHO_INV_2ETA2 in syms:
        add('          const double inv_2eta = 0.5 * ieta;')
    if S.RHO_INV_2ZETA2 in syms:
        add('          const double rho_inv_2zeta2 = rho * izeta * inv_2zeta;')
    if S.RHO_INV_2ETA2 in syms:
        add('          const double rho_inv_2eta2 = rho * ieta * inv_2eta;')
    if S.INV_2ZETA_ETA in syms:
        add('          const double inv_2zeta_eta = 0.5 * ize;')
    return L


def quartet_function(program: ir.Program, variant: Variant, fname: str, stride: int) -> str:
    """The ``__host__ __device__`` per-quartet function (see the module docstring).

    Arguments: centres ``ra..rd`` (3 doubles), exponents ``ea..ed``,
    coefficients ``ca..cd`` (``mol._env`` layout ``[nctr][nprim]``), primitive
    counts, ``t0`` the first contraction tuple of this work item, ``omega``,
    ``out`` (element ``e`` at ``out[e*ostride]``) and, for the memory tiers,
    ``sp`` (slot ``k`` at ``sp[k*stride]``, ``stride`` a compile-time
    constant).  The table and levels forms also take the op stream
    (:class:`Table`); the levels form runs on all lanes of a warp (``lane``),
    lane 0 writing the reserved slots.
    """
    G = variant.group
    nctr = variant.nctr
    form = variant.form
    memory = variant.tier != 'register'
    tab = form in ('table', 'levels')
    lev = form == 'levels'
    acc_out = variant.ctr == 'pairmap'     # levels form: accumulators in out (encode_table)
    seq = None if tab else sequence(program, G)
    slots = assign_slots(program, G)[0].tolist() if memory and not tab else None
    NT, NA = program.n_temps, program.n_acc
    # the sequence as Python lists: the loops below index it per statement
    kinds, dsts, args, gs, ptrs, srcs, coefs, syms_of, is_prim = (
        (None,) * 9 if tab else (a.tolist() for a in (seq.kind, seq.dst, seq.arg, seq.g, seq.ptr, seq.src,
                                                      seq.coef, seq.sym, seq.is_prim)))

    def ref(o):
        if memory:
            return f'sp[{slots[o] * stride}]'
        g, t = divmod(o, NT)
        return f'a{g}_{t}' if t < NA else (f'p{t}' if is_prim[t] else f'c{g}_{t}')

    def statements(lo, hi, ind):
        """Straight-form C statements of seq[lo:hi]."""
        out = []
        for k in range(lo, hi):
            kind, d = kinds[k], dsts[k]
            a, b = ptrs[k], ptrs[k + 1]
            if kind == _ZERO:
                out.append(f'{ind}{ref(d)} = 0.0;' if memory else f'{ind}double {ref(d)} = 0.0;')
                continue
            if kind == _ACC:
                w = f'wt{gs[k]}' if args[k] < 0 else f'w{"abcd"[args[k]]}{gs[k]}'
                out.append(f'{ind}{ref(d)} += {w} * {ref(srcs[a])};')
                continue
            if kind == _OUTPUT:
                e = int(flat_to_block[args[k]])
                out.append(f'{ind}out[(o{gs[k]} + {e}) * ostride] = {ref(srcs[a])};')
                continue
            lhs = ref(d) if memory else f'const double {ref(d)}'
            if kind == _BOYS:
                out.append(f'{ind}{lhs} = cpref * boys[{args[k]}];')
            else:
                terms = zip(coefs[a:b], syms_of[a:b], srcs[a:b])
                out.append(f'{ind}{lhs} = {_expr(terms, ref)};')
        return out

    syms = set(ir.Sym) - {ir.Sym.ONE} if tab else _used_syms(program)
    unknown = syms - _EMITTED_SYMS
    if unknown:
        raise NotImplementedError(f'codegen cannot compute symbols {sorted(s.name for s in unknown)}')
    L = []
    add = L.append
    add(f'FR_INLINE void {fname}(')
    add(_SIGNATURE + _stream_signature(form)[0] + (', int lane' if lev else '') + ') {')
    add('  using namespace fusionrcg;')
    add('  (void)omega; (void)sp;')
    L.extend(PAIR_VECTORS)
    # contraction tuple (u, v, w, x) of each tuple of the group, block offsets
    tstride = (nctr[1] * nctr[2] * nctr[3], nctr[2] * nctr[3], nctr[3], 1)
    idx = {}
    for g in range(G):
        if prod(nctr) > 1:
            add(f'  const int tg{g} = t0 + {g};')
        for k, ch in enumerate('uvwx'):
            idx[g, k] = None
            if nctr[k] > 1:
                add(f'  const int i{ch}{g} = tg{g} / {tstride[k]} % {nctr[k]};')
                idx[g, k] = f'i{ch}{g}'
    if prod(nctr) == 1:
        add('  (void)t0;')
    bstr = _block_strides(program, nctr)
    flat_to_block = np.array(np.unravel_index(np.arange(prod(program.shape)), program.shape)).T @ bstr
    lead = len(program.shape) - 4       # a derivative program's component axis
    offs = []
    for g in range(G):
        terms = [f'{idx[g, k]} * {program.shape[lead + k] * bstr[lead + k]}' for k in range(4) if idx[g, k]]
        offs.append(' + '.join(terms) if terms else '0')
    if tab:
        add(f'  const long ooff[{G}] = {{{", ".join(offs)}}};')
    else:
        for g in range(G):
            add(f'  const long o{g} = {offs[g]};')

    def coef(k, g, p):
        c = 'abcd'[k]
        return f'c{c}[{idx[g, k]} * np{c} + {p}]' if idx[g, k] else f'c{c}[{p}]'

    n_zero = 0 if tab else int((seq.kind == _ZERO).sum())
    mmax = program.max_m
    boys0 = _SYM_SLOTS + G
    if acc_out:
        add('  bool acc_add = false;  // until a primitive quartet has set the accumulators')
    if lev:
        if not acc_out:
            add(f'  for (int k = lane; k < n_acc; k += FR_LANES) sp[{_reserved(program, G)} + k] = 0.0;')
        add('  if (lane == 0) sp[0] = 1.0;')
    elif tab:
        add(f'  for (int k = 0; k < n_acc; ++k) sp[({_reserved(program, G)} + k) * {stride}] = 0.0;')
        add('  sp[0] = 1.0;')
    if not tab:
        L.extend(statements(0, n_zero, '  '))
    L.extend(primitive_loops(syms, variant.omega_kind, mmax, 1.0 if tab else program.boys_const,
                             [f'      const double cab{g} = {coef(0, g, "ia")} * {coef(1, g, "ib")};'
                              for g in range(G)]))
    for g in range(G):
        add(f'          const double wt{g} = cab{g} * {coef(2, g, "ic")} * {coef(3, g, "id")};')
    # a derivative's raised terms: the weight times twice the differentiated shell's exponent
    for c in weighted_accumulates(program):
        for g in range(G):
            add(f'          const double w{"abcd"[c]}{g} = 2.0 * {"abcd"[c]}i * wt{g};')
    ind = '          '
    if tab:
        if lev:
            add(f'{ind}fr_syncwarp();  // the previous primitive is done with the reserved slots')
            add(f'{ind}if (lane == 0) {{')
        for s in sorted(syms):
            if s in ir.PRIMITIVE_SYMS:
                add(f'{ind}sp[{int(s) * stride}] = {s.c_name};')
        for g in range(G):
            add(f'{ind}sp[{(_SYM_SLOTS + g) * stride}] = wt{g};')
        for n, c in enumerate(weighted_accumulates(program)):
            for g in range(G):
                add(f'{ind}sp[{(_weight_slot0(program, G) + n * G + g) * stride}] = w{"abcd"[c]}{g};')
        add(f'{ind}for (int m = 0; m <= {mmax}; ++m) sp[({boys0} + m) * {stride}] = cpref * boys[m];')
        if lev:
            add(f'{ind}}}')
            add(f'{ind}fr_syncwarp();')
        add(f'{ind}fr_pair_products<{stride}>(prim_pairs, n_prim_pairs, coef, sp, {_pair_slot0(program, G)}, '
            + ('lane, FR_LANES);' if lev else '0, 1);'))
        if lev:
            add(f'{ind}fr_syncwarp();')
            add(f'{ind}run_levels<{level_op_words(program)}>(prim_code, prim_levels, n_prim_levels, sp, '
                f'out, ostride, ooff, lane, {"acc_add" if acc_out else "false"});')
        else:
            add(f'{ind}run_ops<{stride}>(prim_code, prim_words, sp, out, ostride, ooff);')
    else:
        L.extend(statements(n_zero, seq.end_body + 1, ind))
    if acc_out:
        add(f'{ind}acc_add = true;')
    L.extend(CLOSE_LOOPS)
    if acc_out:
        # the accumulators are in out; the side passes (or pairmaps.py's products) run the
        # contracted stage
        add('  if (!acc_add)  // every primitive quartet was screened out')
        add('    for (int k = lane; k < n_acc; k += FR_LANES) out[k * ostride] = 0.0;')
        add('}')
        return '\n'.join(L) + '\n'
    # contracted stage
    if tab:
        if lev:
            add('  fr_syncwarp();')
            add('  if (lane == 0) {')
        for d, ax in enumerate('xyz'):
            add(f'  sp[{int(ir.AB[d]) * stride}] = ab{ax};')
            add(f'  sp[{int(ir.CD[d]) * stride}] = cd{ax};')
        if lev:
            add('  }')
            add('  fr_syncwarp();')
        add(f'  fr_pair_products<{stride}>(ctr_pairs, n_ctr_pairs, coef, sp, {_pair_slot0(program, G)}, '
            + ('lane, FR_LANES);' if lev else '0, 1);'))
        if lev:
            add('  fr_syncwarp();')
            add(f'  run_levels<{level_op_words(program)}>(ctr_code, ctr_levels, n_ctr_levels, sp, out, '
                'ostride, ooff, lane, false);')
        else:
            add(f'  run_ops<{stride}>(ctr_code, ctr_words, sp, out, ostride, ooff);')
    if any(s in syms for s in ir.AB) and not tab:
        add('  const double ab_x = abx, ab_y = aby, ab_z = abz;')
    if any(s in syms for s in ir.CD) and not tab:
        add('  const double cd_x = cdx, cd_y = cdy, cd_z = cdz;')
    if not tab:
        L.extend(statements(seq.end_body + 1, len(seq.kind), '  '))
    add('}')
    return '\n'.join(L) + '\n'


def _prelude(orders=()) -> str:
    """The include of the shared pieces, with the level width they are built
    for, and the Boys tables of the top orders ``orders`` the code asks for."""
    return (f'#define FR_LEVEL_OPS {LEVEL_OPS_PER_LANE}\n#define FR_LEVEL_ROW_BITS {LEVEL_ROW_BITS}\n'
            '#include "fusionrcg/eri_common.cuh"\n' + ''.join(_boys_table_source(m) for m in sorted(set(orders))))


@lru_cache(maxsize=None)
def _boys_table_source(order: int) -> str:
    """boys.cuh's FrBoysTaylor<order>: boys.py's taylor_table as a constant
    array (device memory in kernels, host memory in the g++ builds)."""
    values = ', '.join(repr(float(v)) for v in boys_values.taylor_table(order).ravel())
    name = f'fr_boys_taylor_{order}'
    return (f'namespace fusionrcg {{\n#if defined(__CUDA_ARCH__)\n__device__\n#else\nstatic\n#endif\n'
            f'const double {name}[] = {{{values}}};\n'
            f'template <> struct FrBoysTaylor<{order}> {{\n'
            f'  FR_HD static const double* table() {{ return {name}; }}\n}};\n}}  // namespace fusionrcg\n')


def emit_kernel_source(program: ir.Program, variant: Variant, table: Table = None) -> tuple[str, str]:
    """(CUDA source, kernel name) of the class kernel; ``table``: the variant's
    op stream where its form has one (its slot count sizes the launch).

    Arguments: ``quartets`` (nq, 4) int32 shell indices, ``nq``, ``shl``
    (nbas, 4) int32 ``[nprim, ptr_exp, ptr_coeff, ptr_coord]`` into ``env``
    (PySCF's ``mol._env``), ``omega``, ``out`` ([element][quartet], see the
    module docstring), ``scratch`` (global tier: :func:`~.geometry.scratch_per_block`
    doubles per block of the grid), ``n_slots``; the table and levels forms add the op
    stream (:func:`_stream_signature`).  The grid strides over the
    ``nq * n_groups`` work items (one per thread, one per warp in the warp
    tier), so any grid size is valid.  A digesting variant takes the
    digestion's arguments instead of ``out`` (:func:`_digesting_kernel`).
    """
    name = kernel_name(program, variant)
    fn = f'{name}_quartet'
    block = block_size(program, variant, table)
    if block < 32:
        raise ValueError(f'{program.name}: the {variant.tier} tier cannot fit one warp')
    tier = variant.tier
    sig, args = _stream_signature(variant.form)
    warp = variant.form == 'levels'
    L = [_prelude([program.max_m]), quartet_function(program, variant, fn, 1 if warp else block)]
    head = f'extern "C" __global__ void __launch_bounds__({block}, {min_blocks(program, variant, table)}) {name}('
    if variant.digest:
        if isinstance(program, ir.DerivProgram):
            raise ValueError(f'{program.name}: derivative blocks are not digested into J and K')
        L += _digesting_kernel(program, head, fn)
        return '\n'.join(L) + '\n', name
    L.append(head)
    L.append('    const int* __restrict__ quartets, int nq, const int* __restrict__ shl,')
    L.append('    const double* __restrict__ env, double omega, double* __restrict__ out,')
    L.append('    double* __restrict__ scratch, int n_slots' + sig + ') {')
    if tier in ('shared', 'warp'):
        L.append('  extern __shared__ double fr_smem[];')
    if warp:
        L.append('  const int lane = threadIdx.x % 32, per_block = blockDim.x / 32;')
        L.append('  if (lane >= FR_LANES) return;  // on the host one thread runs all lanes')
        home = 'fr_smem' if tier == 'warp' else 'scratch + (long)blockIdx.x * per_block * n_slots'
        L.append(f'  volatile double* sp = {home} + (long)(threadIdx.x / 32) * n_slots;')
        first, step = '(long)blockIdx.x * per_block + threadIdx.x / 32', '(long)gridDim.x * per_block'
    else:
        if tier == 'shared':
            L.append('  volatile double* sp = fr_smem + threadIdx.x;')
        elif tier == 'global':
            L.append(f'  volatile double* sp = scratch + (long)blockIdx.x * n_slots * {block} + threadIdx.x;')
        else:
            L.append('  volatile double* sp = nullptr;')
        first, step = '(long)blockIdx.x * blockDim.x + threadIdx.x', '(long)gridDim.x * blockDim.x'
    L.append('  (void)scratch; (void)n_slots;')
    L.append(f'  const long n_items = (long)nq * {variant.n_groups};')
    L.append(f'  for (long item = {first}; item < n_items; item += {step}) {{')
    L.append('    const int q = (int)(item % nq);')
    L.append('    const int grp = (int)(item / nq);')
    # a pairmap variant (levels form) writes each quartet's accumulators together,
    # [quartet][accumulator]: the lanes of a warp share a quartet
    dest = 'out + (long)q * n_acc, 1' if variant.ctr == 'pairmap' else 'out + q, nq'
    L += _quartet_call(fn, f'grp * {variant.group}', dest, args + (', lane' if warp else ''))
    L.append('  }')
    L.append('}')
    return '\n'.join(L) + '\n', name


def _quartet_call(fn: str, t0: str, dest: str, tail: str) -> list:
    """Kernel lines that find quartet ``q``'s shells and call the quartet function."""
    return ['    const int* s = quartets + 4 * (long)q;',
            '    const int* A = shl + 4 * s[0];',
            '    const int* B = shl + 4 * s[1];',
            '    const int* C = shl + 4 * s[2];',
            '    const int* D = shl + 4 * s[3];',
            f'    {fn}(env + A[3], env + B[3], env + C[3], env + D[3],',
            '        env + A[1], env + B[1], env + C[1], env + D[1],',
            '        env + A[2], env + B[2], env + C[2], env + D[2],',
            f'        A[0], B[0], C[0], D[0], {t0}, omega, {dest}, sp{tail});']


def _digesting_kernel(program: ir.Program, head: str, fn: str) -> list:
    """The register tier's kernel that digests each block where it was computed
    (digest.cuh, the formulas of digest.cu's fr_digest_quartet): arguments
    ``quartets, nq, shl, env, omega`` as the others', then gpu_jk's digestion
    arguments ``ao_loc, nao, dm_j, jh, nset_j, dm_k, kh, nset_k``.  The block
    never goes to memory; the grid strides over whole warps (the warp-aggregated
    adds need every lane), lanes past the end recompute the warp's first quartet and add
    nothing."""
    dims = ', '.join(str(d) for d in program.shape)
    return [
        '#include "fusionrcg/digest.cuh"',
        head,
        '    const int* __restrict__ quartets, int nq, const int* __restrict__ shl,',
        '    const double* __restrict__ env, double omega,',
        '    const int* __restrict__ ao_loc, int nao,',
        '    const double* __restrict__ dm_j, double* __restrict__ jh, int nset_j,',
        '    const double* __restrict__ dm_k, double* __restrict__ kh, int nset_k) {',
        '  volatile double* sp = nullptr;',
        '  const int lane = threadIdx.x & 31;',
        '  for (long base = (long)blockIdx.x * blockDim.x + (threadIdx.x & ~31u); base < nq;',
        '       base += (long)gridDim.x * blockDim.x) {',
        '    const bool active = base + lane < nq;',
        '    const int q = (int)(active ? base + lane : base);',
        f'    double v[{prod(program.shape)}];',
        *_quartet_call(fn, '0', 'v, 1', ''),
        '    const int ao[4] = {ao_loc[s[0]], ao_loc[s[1]], ao_loc[s[2]], ao_loc[s[3]]};',
        f'    fr_digest_block<{dims}>(v, ao, fr_degeneracy(s[0], s[1], s[2], s[3]), nao,',
        '                        dm_j, jh, nset_j, dm_k, kh, nset_k, active);',
        '  }',
        '}']


def host_source(items) -> str:
    """g++-buildable source with one ``extern "C"`` entry per (program, variant).

    Entry ``<kernel_name>_host(r, np, exps, coefs, omega, out, scratch[, op
    stream as the kernel's])``: ``r`` the 12 centre
    coordinates, ``np`` the 4 primitive counts, ``exps`` and ``coefs`` the
    four shells' exponents and ``[nctr][nprim]`` coefficients concatenated,
    ``out`` the C-order full block, ``scratch`` the memory-tier slots
    (``scratch_doubles``, stride 1; may be NULL for registers).
    """
    items = list(items)
    L = [_prelude([program.max_m for program, _ in items])]
    seen = set()
    for program, variant in items:
        name = kernel_name(program, variant)
        if name in seen:
            continue
        seen.add(name)
        sig, args = _stream_signature(variant.form)
        L.append(quartet_function(program, variant, f'{name}_quartet', 1))
        n = variant.nctr
        L.append(f'extern "C" void {name}_host(const double* r, const int* np, const double* exps,')
        L.append('    const double* coefs, double omega, double* out, double* scratch' + sig + ') {')
        L.append('  const double* e[4]; const double* c[4];')
        L.append('  long oe = 0, oc = 0;')
        L.append(f'  const int nctr[4] = {{{n[0]}, {n[1]}, {n[2]}, {n[3]}}};')
        L.append('  for (int i = 0; i < 4; ++i) { e[i] = exps + oe; c[i] = coefs + oc; '
                 'oe += np[i]; oc += (long)np[i] * nctr[i]; }')
        L.append(f'  for (int t0 = 0; t0 < {prod(n)}; t0 += {variant.group})')
        L.append(f'    {name}_quartet(r, r + 3, r + 6, r + 9, e[0], e[1], e[2], e[3],')
        L.append('        c[0], c[1], c[2], c[3], np[0], np[1], np[2], np[3], t0, omega,')
        L.append('        out, 1, scratch' + args + (', 0' if variant.form == 'levels' else '') + ');')
        L.append('}')
    return '\n'.join(L) + '\n'
