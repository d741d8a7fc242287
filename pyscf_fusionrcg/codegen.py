"""Emit CUDA C++ from an orchestrated :class:`~pyscf_fusionrcg.ir.Program`.

One work item = one contracted shell quartet (and, for general contraction,
``group`` of its contracted-function tuples).  The emitted per-quartet function
loops over the primitive quartets, computes the per-primitive symbols of
``ir.Sym`` and the Boys values (``csrc/fusionrcg/boys.cuh``), runs the
primitive stage, accumulates, then runs the contracted stage (HRR and the fused
spherical transforms) and writes the finished block.  It is
``__host__ __device__`` and takes plain pointers, so the very same text builds
with g++ (:func:`host_source`, used by the CPU tests) and with NVRTC/nvcc
(:func:`kernel_source`).

Where the temporaries live is the *tier*:

* ``register``: plain locals (SSA ``const double``), accumulators declared
  before the primitive loops;
* ``shared``: per-thread slices of dynamic shared memory, slot ``k`` of a
  thread at ``smem[k*block + threadIdx.x]``;
* ``warp``: one *warp* per work item, its slots in shared memory
  (``n_slots`` doubles per warp, slot ``k`` at ``smem[warp*n_slots + k]``):
  the lanes split the work of the class between them, so a class whose live
  set is far too large for one thread's share of shared memory still runs
  from shared memory (a (dd|dd) quartet needs 10 KB per warp, not per thread);
* ``global``: global scratch.  In the levels form (the default) a warp runs
  one work item as in the warp tier, its slots at
  ``scratch[(blockIdx.x*warps + warp)*n_slots + k]``: for the classes too
  large for a block's shared memory (beyond (gg|gg), unless the pairmap
  stage keeps the accumulators out of the slots).  In the straight
  and table forms (one thread per item) a slab per block laid out
  ``[slot][thread]``, slot ``k`` at
  ``scratch[(blockIdx.x*n_slots + k)*block + threadIdx.x]``: a warp's
  accesses to one slot are coalesced and all offsets are compile-time.

Temporaries are mapped to *slots* by a linear scan over the emitted sequence
(:func:`assign_slots`; a slot is reused once its value is dead), so a thread's
memory footprint is the orchestrated peak live set, not the temporary count.

How the ops are executed is the *form*:

* ``straight``: one C statement per op, in the program's op order, which is
  the RCG's liveness-orchestrated order, so the live set the compiler sees is
  the one the scheduler minimised.  Memory slots are accessed through a
  ``volatile`` pointer with compile-time offsets: without it ptxas hoists
  loads far ahead and spills the registers the memory tier is meant to save.
* ``table`` (memory tiers only): the same op sequence, with the same slots,
  encoded as a compact op stream (:func:`encode_table`) that a small generic
  loop interprets.  Straight-line code costs ptxas roughly 10 ms per op (a
  (dd|dd) class has 11k ops, (gg|gg) 370k) and its machine code would not fit
  any instruction cache, whereas an op stream is data that all warps share
  through the data caches; the kernel text then depends only on
  (max Boys order, contraction shape, operator, tier), so few kernels compile;
* ``levels`` (warp and global tiers): the same ops cut into levels of
  independent ops that the 32 lanes of a warp share, laid out level by level
  so that each lane finds its ops at fixed offsets (:func:`level_records`)
  and loads the next level's while it computes this one: every word the
  interpreter needs is one coalesced load away, none behind another.

How the contracted stage runs is the variant's ``ctr``: ``'ops'`` (the
program's ops, in the form above) or, for the levels form with one
contraction tuple, ``'pairmap'``: the kernel stops after the primitive stage
and writes each quartet's accumulators, ``out[q * n_acc + k]``, for the side
passes or the pair matrix products of :mod:`pyscf_fusionrcg.pairmaps`.  The
register tier's straight form can do the same (asked for by name, see
``tiers.ctr_mode``), adding each primitive quartet into ``out[k * nq + q]``
(its threads take a quartet each: that layout coalesces), for the side
passes only.

Output layout (the kernel's ``out``): ``out[e * nq + q]`` for element ``e`` of
the block of quartet ``q`` of the launch, ``e`` the C-order flat index of the
full block ``(na*ni, nb*nj, nc*nk, nd*nl)`` (``na`` .. ``nd`` contracted
functions per shell), i.e. ``[component][quartet]``: consecutive threads write
consecutive addresses.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import lru_cache
from math import prod

import numpy as np

from . import boys as boys_values, ir, prepared

TIERS = ('register', 'shared', 'warp', 'global')
FORMS = ('straight', 'table', 'levels')
#: How the contracted stage runs: the program's ops, or (levels form, one
#: contraction tuple) as pair matrices after the kernel (pyscf_fusionrcg.pairmaps)
CTR_MODES = ('ops', 'pairmap')

#: Threads per block of the register tier, and of the global tier (smaller, so
#: that the per-block scratch slabs of the largest classes still give every SM
#: a block within the scratch budget: (gg|gg) needs 185 KB per thread).
BLOCK = 128
GLOBAL_BLOCK = 64
#: Shared tier: the largest block (threads) and the per-block budget in bytes
#: (H100/H200 allow 227 KiB of dynamic shared memory per block).
SHARED_BLOCK_MAX = 128
SHARED_BYTES_MAX = 227 * 1024
SM_SHARED_BYTES = 228 * 1024
#: Warp tier: warps per block (fewer when a warp's slots are large), and the
#: most ops of one level (two per lane: enough to fill the warp, few enough to
#: keep the live set near the orchestrated peak).
WARP_BLOCK_WARPS = 4
LEVEL_OPS_PER_LANE = 2          # FR_LEVEL_OPS of eri_common.cuh (emitted)
#: Bits of each op row's width in a level's shape word (FR_LEVEL_ROW_BITS, emitted):
#: ops | width of row k << (8 + LEVEL_ROW_BITS * k), so at most four rows a lane.
LEVEL_ROW_BITS = 5
LEVEL_WIDTH = 32 * LEVEL_OPS_PER_LANE
LEVEL_OP_WORDS = 7
#: Blocks an SM can hold, and the shared memory the driver reserves per block.
SM_BLOCKS_MAX = 32
BLOCK_RESERVED_SHARED = 1024
#: Threads per SM the levels form leaves registers for: 8 warps, 2 on each of
#: the SM's 4 register files, give 255 a thread (the prologue and the fetched
#: ops of two levels take ~180; 3 warps a file leave 168, and nvcc spills).
LEVELS_THREADS_PER_SM = 256
#: Accumulators one thread may hold for several contracted-function tuples
#: (general contraction): tuples are grouped while group * n_acc <= this, and
#: at most GROUP_MAX of them (the op stream's tuple field has 4 bits).
GROUP_ACC_MAX = 128
GROUP_MAX = 16

# Table form: reserved slots.  Slot 0 holds 1.0, slots 1.. the ir.Sym values
# (slot = enum value), then the contraction weights of the group, then the
# Boys values (times the prefactor), then PAIR_SLOTS products coefficient x
# symbol; temporaries follow.
_SYM_SLOTS = len(ir.Sym)
#: Slots for the distinct products coefficient x symbol (or weight) that the
#: terms of one stage read: the kernel computes them once per primitive (and
#: once for the contracted stage), so that a term is one product of two slots
#: (the most any class up to (ii|ii) needs is 82).
PAIR_SLOTS = 128
# Op stream words (uint32).  Header: kind | nterms << 2 | dst << 6; a term:
# src | pair slot << 17; an output: kind | g << 2 | element << 6, then the
# source slot.  A stage's pairs: coef index | symbol slot << 16.  _ACC_OUT
# (levels form, pairmap): accumulator dst of the kernel's out, not a slot.
_SET, _ADD, _OUT, _ACC_OUT = 0, 1, 2, 3
_SRC_BITS, _COEF_BITS = 17, 16


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
        if self.ctr == 'pairmap' and (self.form == 'table' or prod(self.nctr) != 1 or self.digest):
            raise ValueError("the 'pairmap' contracted stage needs the levels form (warp or global "
                             "tier) or the register tier, one contraction tuple and no digestion; "
                             "use ctr='ops' here")
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
    if variant.form in ('table', 'levels'):
        # the text depends on the class only through block offsets of tuples
        # (and, for levels, through words per op beyond the usual 7)
        words = level_op_words(program) if variant.form == 'levels' else LEVEL_OP_WORDS
        wide = f'_w{words}' if words != LEVEL_OP_WORDS else ''
        return (f'fr_eri_{variant.form}_m{program.max_m}{wide}'
                f'{"_" + cls if prod(variant.nctr) > 1 else ""}_{tail}')
    return f'fr_eri_{cls}_{tail}'


# ------------------------------------------------------------ flat sequence

# statement kinds of the flat sequence
_ZERO, _BOYS, _LIN, _ACC, _OUTPUT = 0, 1, 2, 3, 4


@dataclass(frozen=True, eq=False)
class Sequence:
    """The emitted statement sequence of one (program, group), as arrays.

    Sections: accumulators zeroed before the loops (``_ZERO``), the
    primitive-loop body, and the contracted stage once per tuple of the group.
    Operand ids: temporary ``t`` of tuple ``g`` is ``g * n_temps + t``
    (primitive temporaries only exist for ``g = 0``; they are shared).
    ``arg``: Boys order (``_BOYS``) or flat block index (``_OUTPUT``).
    Terms ``(coef, sym, src)`` in ``[ptr[i], ptr[i+1])``: ``_ACC`` and
    ``_OUTPUT`` have one (the source), ``_BOYS`` and ``_ZERO`` none.
    """
    kind: np.ndarray
    dst: np.ndarray
    arg: np.ndarray
    g: np.ndarray
    ptr: np.ndarray
    src: np.ndarray
    coef: np.ndarray
    sym: np.ndarray
    end_body: int           # index of the last statement of the loop body
    n_temps: int
    n_acc: int
    is_prim: np.ndarray     # (n_temps,) temporaries of the primitive stage


def _terms_of(t: ir.OpTable, ops):
    """Term arrays of the ops ``ops`` of a table, in op order, with counts."""
    cnt = (t.ptr[1:] - t.ptr[:-1])[ops]
    first = np.repeat(t.ptr[:-1][ops], cnt)
    within = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    j = first + within
    return cnt, t.src[j], t.coef[j], t.sym[j].astype(np.int64)


@lru_cache(maxsize=4)
def sequence(program: ir.Program, group: int = 1) -> Sequence:
    """Flatten a program for ``group`` contraction tuples per work item."""
    G, NT, NA = group, program.n_temps, program.n_acc
    P, C = program.prim, program.ctr
    # zeroing
    z_dst = (np.arange(G)[:, None] * NT + np.arange(NA)).ravel()
    nz = len(z_dst)
    # body: every Accumulate once per tuple
    pk = P.kind.astype(np.int64)
    rep = np.where(pk == ir.ACCUMULATE, G, 1)
    op = np.repeat(np.arange(len(pk)), rep)
    sub = np.arange(len(op)) - np.repeat(np.cumsum(rep) - rep, rep)
    bk = pk[op]
    b_kind = np.select([bk == ir.BOYS, bk == ir.LINCOMB], [_BOYS, _LIN], _ACC)
    b_dst = P.dst[op] + np.where(bk == ir.ACCUMULATE, sub * NT, 0)
    b_cnt, b_src, b_coef, b_sym = _terms_of(P, op)
    # contracted stage, once per tuple, ids shifted by g * n_temps
    ck = C.kind.astype(np.int64)
    c_kind = np.tile(np.where(ck == ir.OUTPUT, _OUTPUT, _LIN), G)
    c_g = np.repeat(np.arange(G), len(ck))
    c_dst = np.where(c_kind == _OUTPUT, -1, np.tile(C.dst, G) + c_g * NT)
    cnt1, src1, coef1, sym1 = _terms_of(C, np.arange(len(ck)))
    c_cnt = np.tile(cnt1, G)
    shift = np.repeat(np.arange(G), len(src1)) * NT
    kind = np.concatenate([np.full(nz, _ZERO), b_kind, c_kind])
    g = np.concatenate([z_dst // NT, np.where(bk == ir.ACCUMULATE, sub, 0), c_g])
    cnt = np.concatenate([np.zeros(nz, np.int64), b_cnt, c_cnt])
    ptr = np.zeros(len(kind) + 1, dtype=np.int64)
    np.cumsum(cnt, out=ptr[1:])
    is_prim = np.zeros(NT, dtype=bool)
    is_prim[P.dst[pk != ir.ACCUMULATE]] = True
    return Sequence(
        kind, np.concatenate([z_dst, b_dst, c_dst]),
        np.concatenate([np.zeros(nz, np.int64), P.arg[op], np.tile(C.arg, G)]), g, ptr,
        np.concatenate([b_src, np.tile(src1, G) + shift]),
        np.concatenate([b_coef, np.tile(coef1, G)]),
        np.concatenate([b_sym, np.tile(sym1, G)]),
        nz + len(op) - 1, NT, NA, is_prim)


def _distinct(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array, by sorting: NumPy >= 2.3's
    ``np.unique`` hashes integers, 70x slower at 10^6 distinct ids."""
    ids = np.sort(ids)
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids


def _assign(seq: Sequence, first: int = 0, level=None, acc_slots=True):
    """Linear-scan slots of the operands of a sequence; see :func:`assign_slots`.

    ``acc_slots=False``: the accumulators take no slot (the ``+=`` targets of
    the pairmap primitive stage are the kernel's ``out``, see encode_table).

    ``level`` (one per statement, non-decreasing; default: the statement
    index) groups statements that run side by side: a slot freed by a read in
    a level is only reused by a later level.  Without levels a statement may
    overwrite a slot that it reads for the last time.  With levels, the op at
    position ``i`` of its level runs on lane ``i % 32`` (level_records), and
    it takes a free slot of shared-memory bank ``i % SHARED_BANKS_64`` where
    there is one: the lanes of a half warp then store to distinct banks, and
    later levels read operands spread over the banks (level_traffic).
    """
    n = len(seq.kind)
    inplace = level is None
    level = np.arange(n) if inplace else np.asarray(level, dtype=np.int64)
    term_op = np.repeat(np.arange(n), np.diff(seq.ptr))
    acc_ops = np.nonzero(seq.kind == _ACC)[0] if acc_slots else np.zeros(0, np.int64)
    r_op = np.concatenate([term_op, acc_ops])           # reads: terms, and += targets
    r_id = np.concatenate([seq.src, seq.dst[acc_ops]])
    n_ids = int(max(seq.dst.max(initial=0), r_id.max(initial=0))) + 1
    last = np.full(n_ids, -1, dtype=np.int64)           # level of the last read
    np.maximum.at(last, r_id, level[r_op])
    zero_ids = seq.dst[seq.kind == _ZERO]
    last[zero_ids] = np.maximum(last[zero_ids], level[seq.end_body])
    dying = _distinct(r_id[last[r_id] == level[r_op]])
    dying = dying[np.argsort(last[dying], kind='stable')]
    n_lev = int(level[-1]) + 1 if n else 0
    dptr = np.searchsorted(last[dying], np.arange(n_lev + 1))
    writes = np.isin(seq.kind, (_ZERO, _BOYS, _LIN))
    wptr = np.searchsorted(level, np.arange(n_lev + 1))
    # plain lists in the loop: NumPy scalar access costs more than the work
    slots = [-1] * n_ids
    banks = 1 if inplace else SHARED_BANKS_64
    free = [[] for _ in range(banks)]       # free slots by bank, each LIFO
    n_free = 0
    n_slots = first
    dst, dying_l, dptr_l, last_l = seq.dst.tolist(), dying.tolist(), dptr.tolist(), last.tolist()
    written = np.nonzero(writes)[0].tolist()
    wptr_l = np.searchsorted(written, wptr).tolist()    # level lv writes written[wptr_l[lv]:wptr_l[lv+1]]
    wptr_st = wptr.tolist()                             # level lv's first statement

    def give(slot):
        nonlocal n_free
        free[slot % banks].append(slot)
        n_free += 1

    def release(lv):
        for r in dying_l[dptr_l[lv]:dptr_l[lv + 1]]:
            give(slots[r])

    def take(bank):
        nonlocal n_slots, n_free
        if not n_free:
            n_slots += 1
            return n_slots - 1
        pool = free[bank] or max(free, key=len)
        n_free -= 1
        return pool.pop()   # LIFO: the most recently freed slot is hot in cache

    for lv in np.nonzero((wptr[1:] > wptr[:-1]) | (dptr[1:] > dptr[:-1]))[0].tolist():
        if inplace:
            release(lv)
        unread = []
        for k in written[wptr_l[lv]:wptr_l[lv + 1]]:
            d = dst[k]
            slot = slots[d] = take((k - wptr_st[lv]) % banks)
            if last_l[d] < 0:       # never read: dead at once
                if inplace:
                    give(slot)
                else:
                    unread.append(slot)
        if not inplace:
            release(lv)
            for slot in unread:
                give(slot)
    return np.asarray(slots, dtype=np.int64), n_slots


def level_schedule(seq: Sequence, lo: int, hi: int, width: int = None) -> np.ndarray:
    """Level of each statement of ``seq[lo:hi]`` for lanes that run side by side.

    List scheduling: a statement is ready once every value it reads (written
    in this range) was written in an earlier level; each level takes at most
    ``width`` ready statements, lowest orchestrated index first, so the order
    stays close to the orchestrated one and so does the live set.  The
    dependency edges are found with NumPy; only the list scheduling itself
    walks them in Python (a (gg|gg) class has 10^6 statements).
    """
    width = width or LEVEL_WIDTH
    n = hi - lo
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    term_op = np.repeat(np.arange(n), np.diff(seq.ptr[lo:hi + 1]))
    srcs = seq.src[seq.ptr[lo]:seq.ptr[hi]]
    kind, dst = seq.kind[lo:hi], seq.dst[lo:hi]
    written = np.nonzero((kind == _BOYS) | (kind == _LIN))[0]
    writer = np.full(int(max(dst.max(), srcs.max(initial=0))) + 1, -1, dtype=np.int64)
    np.maximum.at(writer, dst[written], written)        # an id's last writer in the range
    w = writer[srcs]
    read = w >= 0
    # each (writer, reader) once, ordered by writer then reader
    edges_w, edges_r = np.divmod(_distinct(w[read] * n + term_op[read]), n)
    waiting = np.bincount(edges_r, minlength=n).tolist()
    first = np.searchsorted(edges_w, np.arange(n + 1)).tolist()
    users = edges_r.tolist()
    ready = [k for k in range(n) if waiting[k] == 0]     # ascending: already a heap
    level = [0] * n
    pop, push = heapq.heappop, heapq.heappush
    lv = 0
    while ready:
        take = [pop(ready) for _ in range(min(width, len(ready)))]
        for k in take:
            level[k] = lv
            for u in users[first[k]:first[k + 1]]:
                waiting[u] -= 1
                if waiting[u] == 0:
                    push(ready, u)
        lv += 1
    return np.asarray(level, dtype=np.int64)


def assign_slots(program: ir.Program, group: int = 1):
    """Slot of every operand id of :func:`sequence` for the memory tiers.

    Returns (slots indexed by operand id, n_slots).  Accumulators live from
    the zeroing through the whole loop body (they are read on every
    iteration) to their last contracted-stage read; primitive temporaries
    live within one iteration.  A slot whose value is read for the last time
    by a statement can be written by that same statement.
    """
    return _slots(program, group)


@lru_cache(maxsize=4)
def _slots(program, group):
    return _assign(sequence(program, group))


# ------------------------------------------------------------ table encoding

@dataclass(frozen=True, eq=False)
class Table:
    """Op stream of one class for the table and levels forms (device arrays are
    made from it).  In the levels form each stage is a sequence of level
    records (:func:`level_records`) and ``*_levels`` holds, per level, its
    word offset and ``ops | words << 8``."""
    prim: np.ndarray        # uint32 words, primitive-loop body
    ctr: np.ndarray         # uint32 words, contracted stage (all tuples)
    coef: np.ndarray        # float64 distinct coefficients
    n_slots: int            # slots per thread (per warp for levels), reserved ones included
    n_acc: int              # accumulators (slots zeroed by the kernel, or in out: pairmap)
    prim_pairs: np.ndarray = None   # uint32 coef index | symbol slot << 16, per pair slot
    ctr_pairs: np.ndarray = None
    prim_levels: np.ndarray = None  # levels form: int32 (base, shape) of each level
    ctr_levels: np.ndarray = None

    def stream_args(self) -> tuple:
        """The kernel's op-stream arguments in order (arrays and ints, see
        :func:`_stream_signature`)."""
        pairs = (self.prim_pairs, len(self.prim_pairs), self.ctr_pairs, len(self.ctr_pairs))
        if self.prim_levels is None:
            return (self.prim, len(self.prim), self.ctr, len(self.ctr)) + pairs + (self.coef, self.n_acc)
        return (self.prim, self.prim_levels, len(self.prim_levels) // 2, self.ctr,
                self.ctr_levels, len(self.ctr_levels) // 2) + pairs + (self.coef, self.n_acc)


def _pair_slot0(program: ir.Program, group: int) -> int:
    """First of the PAIR_SLOTS slots of the table and levels forms."""
    return _SYM_SLOTS + group + program.max_m + 1


def _reserved(program: ir.Program, group: int) -> int:
    return _pair_slot0(program, group) + PAIR_SLOTS


def _op_words(seq: Sequence, lo: int = 0, hi: int = None) -> np.ndarray:
    """Words each statement of ``seq[lo:hi]`` takes in the op stream
    (:func:`encode_table`): a header and its terms, or a header and one word."""
    hi = len(seq.kind) if hi is None else hi
    return np.where(seq.kind[lo:hi] == _LIN, 1 + np.diff(seq.ptr[lo:hi + 1]), 2)


def _permuted(seq: Sequence, order: np.ndarray, end_body: int) -> Sequence:
    """``seq`` with its statements in ``order`` (terms follow their statement)."""
    cnt = np.diff(seq.ptr)[order]
    ptr = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(cnt, out=ptr[1:])
    j = np.repeat(seq.ptr[:-1][order], cnt) + (np.arange(ptr[-1]) - np.repeat(ptr[:-1], cnt))
    return Sequence(seq.kind[order], seq.dst[order], seq.arg[order], seq.g[order], ptr,
                    seq.src[j], seq.coef[j], seq.sym[j], end_body, seq.n_temps, seq.n_acc,
                    seq.is_prim)


@lru_cache(maxsize=4)
def level_sequence(program: ir.Program, group: int = 1):
    """(sequence in level order, level of each statement, number of body levels).

    Level 0 is the zeroing; the body and the contracted stage are each cut by
    :func:`level_schedule`; statements are sorted by level and, inside a
    level (whose ops are independent), longest first, so that the ops of
    similar length share an op row (level_records: a row is as wide as its
    longest op, and a lane loads that many words).
    """
    seq = sequence(program, group)
    n_zero = int((seq.kind == _ZERO).sum())
    body = level_schedule(seq, n_zero, seq.end_body + 1)
    ctr = level_schedule(seq, seq.end_body + 1, len(seq.kind))
    n_body = int(body.max(initial=-1)) + 1
    level = np.concatenate([np.zeros(n_zero, np.int64), 1 + body, 1 + n_body + ctr])
    order = np.lexsort((-_op_words(seq), level))
    return _permuted(seq, order, seq.end_body), level[order], n_body


def encode_table(program: ir.Program, variant: Variant) -> Table:
    """Encode the flat sequence (slots as the straight form, shifted past the
    reserved slots) as the op stream the table form interprets; for the levels
    form, in level order with level-granular slots, plus the op and level
    offsets.

    A pairmap variant's stream is the primitive stage alone, its accumulates
    ``_ACC_OUT`` ops into the kernel's ``out`` (the quartet's accumulators,
    which the products read): its slots are the primitive temporaries only,
    where the accumulators took most of them (4600 of 5536 for (gf|fd)) and
    held the warps an SM can fit to 1-7 for the largest classes."""
    G = variant.group
    base = _reserved(program, G)
    acc_out = variant.ctr == 'pairmap'
    if variant.form == 'levels':
        seq, level, n_body = level_sequence(program, G)
        if acc_out:     # no zeroing, no contracted stage
            n_zero = int((seq.kind == _ZERO).sum())
            body = np.arange(n_zero, seq.end_body + 1)
            seq, level = _permuted(seq, body, len(body) - 1), level[body]
        slots, n_slots = _assign(seq, first=base, level=level, acc_slots=not acc_out)
    else:
        seq = sequence(program, G)
        slots, n_slots = _assign(seq, first=base)
    n_zero = int((seq.kind == _ZERO).sum())
    if acc_out and not np.array_equal(np.bincount(seq.dst[seq.kind == _ACC], minlength=program.n_acc),
                                      np.ones(program.n_acc, np.int64)):
        # the first primitive quartet sets each accumulator in out: one left out would be garbage
        raise AssertionError(f'{program.name}: the primitive stage must add to every accumulator once')
    if n_zero and not np.array_equal(slots[seq.dst[:n_zero]], base + np.arange(n_zero)):
        raise AssertionError('accumulator slots must follow the reserved slots')
    strides = np.array(_block_strides(program, variant.nctr))
    flat_to_block = np.array(np.unravel_index(np.arange(prod(program.shape)), program.shape)).T @ strides
    coef_values = np.unique(np.concatenate([seq.coef, [1.0, program.boys_const]]))
    if len(coef_values) > 1 << _COEF_BITS:
        raise ValueError(f'{program.name}: {len(coef_values)} distinct coefficients')
    if (n_slots > 1 << _SRC_BITS or prod(program.shape) * prod(variant.nctr) >= 1 << 26
            or _reserved(program, G) > 1 << (32 - _SRC_BITS)):
        raise ValueError(f'{program.name}: op stream field overflow')

    def cidx(c):
        return np.searchsorted(coef_values, c).astype(np.int64)

    pair0 = _pair_slot0(program, G)

    def encode(lo, hi):
        """(words, word offset of each op, words of each op, pairs) of seq[lo:hi]."""
        k = seq.kind[lo:hi]
        nt = np.diff(seq.ptr[lo:hi + 1])
        if (nt > 15).any():
            raise ValueError(f'{program.name}: an op with more than 15 terms')
        nw = _op_words(seq, lo, hi)
        start = np.cumsum(nw) - nw
        words = np.zeros(int(nw.sum()), dtype=np.int64)
        dslot = np.where(k == _OUTPUT, 0, slots[np.maximum(seq.dst[lo:hi], 0)])
        g = seq.g[lo:hi]
        words[start] = np.select(
            [k == _OUTPUT, k == _ACC],
            [_OUT | g << 2 | flat_to_block[np.where(k == _OUTPUT, seq.arg[lo:hi], 0)] << 6,
             (_ACC_OUT | 1 << 2 | seq.dst[lo:hi] << 6) if acc_out else (_ADD | 1 << 2 | dslot << 6)],
            _SET | np.where(k == _BOYS, 1, nt) << 2 | dslot << 6)
        # term words: (position, source slot, coefficient index, symbol slot);
        # the second words of Boys and Accumulate statements are terms too
        t0 = seq.ptr[lo:hi]
        src1 = slots[seq.src[np.minimum(t0, len(seq.src) - 1)]]
        boys, acc = np.nonzero(k == _BOYS)[0], np.nonzero(k == _ACC)[0]
        lin = np.nonzero(k == _LIN)[0]
        cnt = nt[lin]
        tj = np.repeat(t0[lin], cnt) + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        pos = np.concatenate([start[boys] + 1, start[acc] + 1,
                              np.repeat(start[lin] + 1, cnt) + (tj - np.repeat(t0[lin], cnt))])
        src = np.concatenate([_SYM_SLOTS + G + seq.arg[lo:hi][boys], src1[acc], slots[seq.src[tj]]])
        pair = np.concatenate([cidx(np.full(len(boys), program.boys_const)) | int(ir.Sym.ONE) << 16,
                               cidx(np.ones(len(acc))) | (_SYM_SLOTS + g[acc]) << 16,
                               cidx(seq.coef[tj]) | seq.sym[tj].astype(np.int64) << 16])
        pairs, which = np.unique(pair, return_inverse=True)
        if len(pairs) > PAIR_SLOTS:
            raise ValueError(f'{program.name}: {len(pairs)} coefficient-symbol pairs in a stage')
        words[pos] = src | (pair0 + which.reshape(-1)) << _SRC_BITS
        out = np.nonzero(k == _OUTPUT)[0]
        words[start[out] + 1] = src1[out]
        if ((words[start] & 0xFFFFFFFF) == 0).any():
            raise AssertionError('a zero header marks "no op" in the levels form')
        return words.astype(np.uint32), start, nw, pairs.astype(np.uint32)

    prim, ctr = encode(n_zero, seq.end_body + 1), encode(seq.end_body + 1, len(seq.kind))
    if variant.form != 'levels':
        return Table(prim[0], ctr[0], coef_values, n_slots, n_zero, prim[3], ctr[3])
    op_words = level_op_words(program)
    if max(prim[2].max(initial=0), ctr[2].max(initial=0)) > op_words:
        raise AssertionError(f'{program.name}: an op is longer than level_op_words')
    prim_rec, prim_levels = level_records(*prim[:3], level[n_zero:seq.end_body + 1] - 1)
    ctr_rec, ctr_levels = level_records(*ctr[:3], level[seq.end_body + 1:] - 1 - n_body)
    n_acc = program.n_acc if acc_out else n_zero
    return Table(prim_rec, ctr_rec, coef_values, n_slots, n_acc, prim[3], ctr[3], prim_levels, ctr_levels)


def level_records(words, start, nw, level):
    """Lay a stage's ops out level by level for ``run_levels`` (eri_common.cuh).

    Op ``i = lane + 32 k`` of level ``L`` (``level`` non-decreasing, from 0)
    is in op row ``k`` of the level; row ``k`` is as wide as its longest op,
    ``width[L, k]`` words (0 for a row without ops), and word ``j`` of the op
    is at ``base[L] + (row_start[L, k] + j) * 32 + lane``, row_start the
    widths of the rows before.  A level holds just those rows (missing ops
    and words are zero), which is all ``fr_fetch_level`` loads.  Returns
    (records, per level ``(base, ops | width[L, k] << (8 + LEVEL_ROW_BITS k))``
    flattened as int32).
    """
    if 8 + LEVEL_ROW_BITS * LEVEL_OPS_PER_LANE > 31:
        raise AssertionError('the op rows of a level do not fit its shape word')
    n_lev = int(level[-1]) + 1 if len(level) else 0
    count = np.bincount(level, minlength=n_lev)
    if count.max(initial=0) > 32 * LEVEL_OPS_PER_LANE:
        raise AssertionError('a level holds more ops than the lanes of a warp take')
    if nw.max(initial=0) >= 1 << LEVEL_ROW_BITS:
        raise AssertionError('an op is longer than a level\'s shape word can say')
    within = np.arange(len(level)) - (np.cumsum(count) - count)[level]
    k, lane = np.divmod(within, 32)
    width = np.zeros((n_lev, LEVEL_OPS_PER_LANE), dtype=np.int64)
    np.maximum.at(width, (level, k), nw)
    row_start = np.cumsum(width, axis=1) - width
    size = 32 * width.sum(axis=1)
    base = np.cumsum(size) - size
    records = np.zeros(int(size.sum()), dtype=np.uint32)
    at = base[level] + row_start[level, k] * 32 + lane
    for j in range(int(nw.max(initial=0))):
        has = nw > j
        records[at[has] + j * 32] = words[start[has] + j]
    shape = count + (width << (8 + LEVEL_ROW_BITS * np.arange(LEVEL_OPS_PER_LANE))).sum(axis=1)
    return records, np.stack([base, shape], axis=1).ravel().astype(np.int32)


def level_rows(levels: np.ndarray):
    """``(base, ops, width)`` of each level from ``level_records``' level array:
    width[L, k] the words of op row k."""
    base, shape = levels.reshape(-1, 2).T.astype(np.int64)
    shifts = 8 + LEVEL_ROW_BITS * np.arange(LEVEL_OPS_PER_LANE)
    return base, shape & 0xFF, (shape[:, None] >> shifts) & ((1 << LEVEL_ROW_BITS) - 1)


#: Doubles a warp's shared-memory access serves per wavefront (32 banks of
#: 4 bytes): lanes whose slots differ modulo this conflict.
SHARED_BANKS_64 = 16


def level_traffic(program: ir.Program, variant: Variant) -> dict:
    """What one warp asks of the load/store pipeline when it runs a levels
    variant's op stream (run_levels in eri_common.cuh), per stage: ``levels``;
    ``record_rows``, the 128-byte rows of 32-bit record words it fetches (the
    width of each op row of each level, :func:`level_records`);
    ``shared_wavefronts``, the shared-memory wavefronts of its operand and
    pair-product loads (every word after the header of every op row, as
    run_levels loads them: a word past an op's terms, or of a lane without
    an op, reads slot 0) and its result stores, each access counted per half
    warp as its most loaded bank (distinct slots equal modulo
    ``SHARED_BANKS_64``); and ``conflict_free``, the same accesses without
    conflicts (a pairmap variant's accumulators are in global memory, not
    counted).  A static count from the tables, for the primitive stage once
    (it runs once per primitive quartet) and the contracted stage once."""
    if variant.form != 'levels':
        raise ValueError(f'level_traffic needs the levels form, not {variant.form!r}')
    t = table(program, variant)
    words = level_op_words(program)
    out = {}
    for stage, rec, levels in (('primitive', t.prim, t.prim_levels), ('contracted', t.ctr, t.ctr_levels)):
        base, count, width = level_rows(levels)
        row_start = np.cumsum(width, axis=1) - width
        n_lev = len(base)
        k, j, lane = np.meshgrid(np.arange(LEVEL_OPS_PER_LANE), np.arange(words), np.arange(32), indexing='ij')
        at = base[:, None, None, None] + (row_start[:, :, None, None] + j) * 32 + lane
        valid_op = (32 * k + lane)[None] < count[:, None, None, None]
        w = np.where(valid_op & (j[None] < width[:, :, None, None]), rec[np.minimum(at, len(rec) - 1)], 0)
        w = w.astype(np.int64)
        head = w[:, :, :1, :]
        kind, dst = head & 3, head >> 6
        is_op = valid_op[:, :, :1, :] & (head != 0)
        # accesses (level, op row k, access) x 32 lanes, -1 where a lane has none
        accesses = [w[:, :, 1:, :] & ((1 << _SRC_BITS) - 1), w[:, :, 1:, :] >> _SRC_BITS,
                    np.where(is_op & (kind < _OUT), dst, -1), np.where(is_op & (kind == _ADD), dst, -1)]
        lanes = np.concatenate([a.reshape(-1, 32) for a in accesses])
        out[stage] = dict(levels=n_lev, record_rows=int(width.sum()),
                          **_bank_wavefronts(lanes))
    return out


def _bank_wavefronts(lanes: np.ndarray) -> dict:
    """Wavefronts of 64-bit shared accesses, one row of 32 lane slots (-1: no
    access) each, counted per half warp: the most distinct slots in one bank,
    against one per half warp with any access."""
    halves = lanes.reshape(-1, 16)
    used = halves >= 0
    rows = np.nonzero(used.any(axis=1))[0]
    if not len(rows):       # a stage without ops (a pairmap variant's contracted one)
        return dict(shared_wavefronts=0, conflict_free=0)
    row, col = np.nonzero(used[rows])
    slot = halves[rows][row, col]
    # distinct (half warp, slot), then the count of each (half warp, bank)
    pairs = _distinct(row * (1 << 32) + slot)
    r, sl = np.divmod(pairs, 1 << 32)
    per_bank = np.bincount(r * SHARED_BANKS_64 + sl % SHARED_BANKS_64, minlength=len(rows) * SHARED_BANKS_64)
    return dict(shared_wavefronts=int(per_bank.reshape(len(rows), -1).max(axis=1).sum()),
                conflict_free=int(len(rows)))


def level_op_words(program: ir.Program) -> int:
    """Words per op a levels kernel reserves registers for (header and terms):
    7, or more where an op has more than 6 terms (the spherical transform of
    l = 6); part of the kernel text and name."""
    most = max(int(np.diff(t.ptr).max(initial=0)) for t in (program.prim, program.ctr))
    return max(LEVEL_OP_WORDS, 1 + most)


# ------------------------------------------------------------------ emitter

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


def _block_strides(program: ir.Program, nctr):
    full = [n * c for n, c in zip(program.shape, nctr)]
    return [prod(full[i + 1:]) for i in range(4)]


def scratch_doubles(program: ir.Program, variant: Variant) -> int:
    """Doubles of shared or global scratch one thread needs (0 for registers)."""
    if variant.tier == 'register':
        return 0
    if variant.form in ('table', 'levels'):
        return table(program, variant).n_slots
    return assign_slots(program, variant.group)[1]


@lru_cache(maxsize=8)
def table(program: ir.Program, variant: Variant) -> Table:
    """The (cached) op stream of a table- or levels-form variant, kept on disk
    by :mod:`pyscf_fusionrcg.prepared` (encoding (gg|gg)'s takes seconds)."""
    return prepared.for_variant('table', program, variant, lambda: encode_table(program, variant),
                                lambda t: isinstance(t, Table))


def shared_block(program: ir.Program, variant: Variant) -> int:
    """Threads per block of the shared tier (< 32 when one warp cannot fit)."""
    per_thread = 8 * scratch_doubles(program, variant)
    fit = SHARED_BYTES_MAX // max(per_thread, 1) // 32 * 32
    return min(SHARED_BLOCK_MAX, fit)


def warp_block(program: ir.Program, variant: Variant) -> int:
    """Threads per block of the warp tier (0 when one warp's slots do not fit).

    The warps per block (at most ``WARP_BLOCK_WARPS``) that let the most warps
    reside on an SM (by shared memory and by ``LEVELS_THREADS_PER_SM``): the
    interpreter waits on memory, and only other warps hide that (four 29 KB
    warps of (gd|fd) leave one block, four warps, per SM; blocks of one warp
    leave seven)."""
    per_warp = 8 * scratch_doubles(program, variant)

    def resident(w):
        return w * min(SM_BLOCKS_MAX, SM_SHARED_BYTES // (w * per_warp + BLOCK_RESERVED_SHARED),
                       LEVELS_THREADS_PER_SM // (32 * w))

    fits = [w for w in range(1, WARP_BLOCK_WARPS + 1) if w * per_warp <= SHARED_BYTES_MAX]
    return 32 * max(fits, key=lambda w: (resident(w), w)) if fits else 0


def block_size(program: ir.Program, variant: Variant) -> int:
    if variant.tier == 'shared':
        return shared_block(program, variant)
    if variant.tier == 'warp':
        return warp_block(program, variant)
    if variant.form == 'levels':
        return 32 * WARP_BLOCK_WARPS
    return GLOBAL_BLOCK if variant.tier == 'global' else BLOCK


def items_per_block(program: ir.Program, variant: Variant) -> int:
    """Work items a block runs at once: one per warp in the levels form."""
    block = block_size(program, variant)
    return block // 32 if variant.form == 'levels' else block


def scratch_per_block(program: ir.Program, variant: Variant) -> int:
    """Doubles of global scratch one block needs (0 outside the global tier)."""
    if variant.tier != 'global':
        return 0
    return scratch_doubles(program, variant) * items_per_block(program, variant)


def min_blocks(program: ir.Program, variant: Variant) -> int:
    """Blocks per SM the compiler must leave registers for (``__launch_bounds__``).

    The levels form asks for as many blocks as its shared memory lets reside, up
    to ``LEVELS_THREADS_PER_SM`` threads (fewer registers make nvcc spill the
    per-primitive prologue): lanes waiting on memory need other warps to hide
    behind.
    """
    if variant.form != 'levels':
        return 1
    fit = SM_SHARED_BYTES // (shared_bytes(program, variant) + BLOCK_RESERVED_SHARED)
    return max(1, min(fit, SM_BLOCKS_MAX, LEVELS_THREADS_PER_SM // block_size(program, variant)))


def shared_bytes(program: ir.Program, variant: Variant) -> int:
    """Dynamic shared memory of a launch (the shared and warp tiers)."""
    if variant.tier == 'shared':
        return 8 * scratch_doubles(program, variant) * shared_block(program, variant)
    if variant.tier == 'warp':
        return 8 * scratch_doubles(program, variant) * (warp_block(program, variant) // 32)
    return 0


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
    acc_out = variant.ctr == 'pairmap'     # accumulators in out (encode_table; the straight form below)
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
            if kind == _ACC and acc_out:
                out.append(f'{ind}out[{d} * ostride] = (acc_add ? out[{d} * ostride] : 0.0) + '
                           f'wt0 * {ref(srcs[a])};')
                continue
            if kind == _ACC:
                out.append(f'{ind}{ref(d)} += wt{gs[k]} * {ref(srcs[a])};')
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
    add('  const double abx = ra[0] - rb[0], aby = ra[1] - rb[1], abz = ra[2] - rb[2];')
    add('  const double cdx = rc[0] - rd[0], cdy = rc[1] - rd[1], cdz = rc[2] - rd[2];')
    add('  const double rab2 = abx * abx + aby * aby + abz * abz;')
    add('  const double rcd2 = cdx * cdx + cdy * cdy + cdz * cdz;')
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
    offs = []
    for g in range(G):
        terms = [f'{idx[g, k]} * {program.shape[k] * bstr[k]}' for k in range(4) if idx[g, k]]
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
    if not tab and not acc_out:
        L.extend(statements(0, n_zero, '  '))
    add('  for (int ia = 0; ia < npa; ++ia) {')
    add('    const double ai = ea[ia];')
    add('    for (int ib = 0; ib < npb; ++ib) {')
    add('      const double bi = eb[ib];')
    add('      const double zeta = ai + bi, izeta = 1.0 / zeta;')
    add('      const double kab_arg = ai * bi * izeta * rab2;')
    add('      if (kab_arg > FR_EXP_CUTOFF) continue;')
    add('      const double kab = exp(-kab_arg);')
    add('      const double px = (ai * ra[0] + bi * rb[0]) * izeta;')
    add('      const double py = (ai * ra[1] + bi * rb[1]) * izeta;')
    add('      const double pz = (ai * ra[2] + bi * rb[2]) * izeta;')
    for g in range(G):
        add(f'      const double cab{g} = {coef(0, g, "ia")} * {coef(1, g, "ib")};')
    add('      for (int ic = 0; ic < npc; ++ic) {')
    add('        const double ci = ec[ic];')
    add('        for (int id = 0; id < npd; ++id) {')
    add('          const double di = ed[id];')
    add('          const double eta = ci + di, ieta = 1.0 / eta;')
    add('          const double kcd_arg = ci * di * ieta * rcd2;')
    add('          if (kcd_arg > FR_EXP_CUTOFF) continue;')
    add('          const double qx = (ci * rc[0] + di * rd[0]) * ieta;')
    add('          const double qy = (ci * rc[1] + di * rd[1]) * ieta;')
    add('          const double qz = (ci * rc[2] + di * rd[2]) * ieta;')
    add('          const double rze = fr_rsqrt(zeta + eta), ize = fr_recip_from_rsqrt(zeta + eta, rze);')
    add('          const double rho = zeta * eta * ize;')
    add('          const double pqx = px - qx, pqy = py - qy, pqz = pz - qz;')
    add('          const double T = rho * (pqx * pqx + pqy * pqy + pqz * pqz);')
    add('          const double pref = kTwoPi52 * izeta * ieta * rze * kab * exp(-kcd_arg);')
    add(f'          double boys[{mmax + 1}];')
    add(f'          boys_operator<{variant.omega_kind}, {mmax}>(T, rho, omega, boys);')
    # the table form carries the constant in the op stream
    add(f'          const double cpref = {_num(1.0 if tab else program.boys_const)} * pref;')
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
    for g in range(G):
        add(f'          const double wt{g} = cab{g} * {coef(2, g, "ic")} * {coef(3, g, "id")};')
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
    add('        }')
    add('      }')
    add('    }')
    add('  }')
    if acc_out:
        # the accumulators are in out; the side passes (or pairmaps.py's products) run the
        # contracted stage
        add('  if (!acc_add)  // every primitive quartet was screened out')
        if lev:
            add('    for (int k = lane; k < n_acc; k += FR_LANES) out[k * ostride] = 0.0;')
        else:
            add(f'    for (int k = 0; k < {NA}; ++k) out[k * ostride] = 0.0;')
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


def kernel_source(program: ir.Program, variant: Variant) -> tuple[str, str]:
    """(CUDA source, kernel name) of the class kernel (:func:`emit_kernel_source`),
    kept on disk by :mod:`pyscf_fusionrcg.prepared`: gpucore finds a cached
    cubin by hashing the text, and generating a register-tier class's text
    takes up to seconds."""
    return prepared.for_variant(
        'source', program, variant, lambda: emit_kernel_source(program, variant),
        lambda s: isinstance(s, tuple) and len(s) == 2 and all(isinstance(x, str) for x in s))


def emit_kernel_source(program: ir.Program, variant: Variant) -> tuple[str, str]:
    """(CUDA source, kernel name) of the class kernel, generated.

    Arguments: ``quartets`` (nq, 4) int32 shell indices, ``nq``, ``shl``
    (nbas, 4) int32 ``[nprim, ptr_exp, ptr_coeff, ptr_coord]`` into ``env``
    (PySCF's ``mol._env``), ``omega``, ``out`` ([element][quartet], see the
    module docstring), ``scratch`` (global tier: :func:`scratch_per_block`
    doubles per block of the grid), ``n_slots``; the table and levels forms add the op
    stream (:func:`_stream_signature`).  The grid strides over the
    ``nq * n_groups`` work items (one per thread, one per warp in the warp
    tier), so any grid size is valid.  A digesting variant takes the
    digestion's arguments instead of ``out`` (:func:`_digesting_kernel`).
    """
    name = kernel_name(program, variant)
    fn = f'{name}_quartet'
    block = block_size(program, variant)
    if block < 32:
        raise ValueError(f'{program.name}: the {variant.tier} tier cannot fit one warp')
    tier = variant.tier
    sig, args = _stream_signature(variant.form)
    warp = variant.form == 'levels'
    L = [_prelude([program.max_m]), quartet_function(program, variant, fn, 1 if warp else block)]
    head = f'extern "C" __global__ void __launch_bounds__({block}, {min_blocks(program, variant)}) {name}('
    if variant.digest:
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
    # the levels form of a pairmap variant writes each quartet's accumulators together,
    # [quartet][accumulator] (the lanes of a warp share a quartet); the register tier's
    # threads take one quartet each, so that layout would not coalesce: [accumulator][quartet]
    dest = 'out + (long)q * n_acc, 1' if variant.ctr == 'pairmap' and warp else 'out + q, nq'
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


# ------------------------------------------------------------ side passes
#
# The pairmap contracted stage (pairmaps.py: block = Mb(AB) acc Mk(CD)) as
# generated code instead of dense products: the graph's bra steps run on
# each ket column of a quartet's accumulators, then its ket steps on each
# row of the result, each a straight-line function of one vector.  The
# steps are sparse where the products' matrices are dense (the (fd| side
# map has 410 nonzeros of 16 100), and the half-transformed block stays
# in shared memory instead of a trip through device memory.

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
    from . import pairmaps
    nbf, nbs, nks, nkf = pass_dims(program)
    terms = {side: sum(len(t) for _, t in pairmaps.side_nodes(program.rcg, side)) for side in ('bra', 'ket')}
    return dict(fma=terms['bra'] * nks + terms['ket'] * nbf, bytes=8 * (nbs * nks + nbf * nkf))


def _side_function(program: ir.Program, side: str, fname: str) -> list:
    """Lines of ``fname(in, istride, rx, ry, rz, out, ostride)``: one side's
    contracted steps (pairmaps.side_nodes) on the start values ``in[u *
    istride]``, with pair vector (rx, ry, rz), into the final rows
    ``out[row * ostride]`` (pairmaps.final_rows)."""
    from . import pairmaps
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


def side_pass_source(program: ir.Program, acc_major: bool = False) -> tuple[str, str]:
    """(CUDA source, kernel name) of the side passes of a class.

    Arguments: ``acc`` ([quartet][bra start][ket start], the levels form's
    pairmap output; ``acc_major``: [bra start][ket start][quartet], the
    register tier's), ``ab`` and ``cd`` (nq, 3) pair vectors, ``out`` (the
    blocks, [element][quartet] as the digestion reads them), ``nq``.  A block
    takes :func:`pass_quartets` quartets and :func:`pass_shared_bytes` of
    dynamic shared memory; the grid covers ``nq`` (no striding).  The bra
    pass's threads take consecutive accumulators of a quartet, or with
    ``acc_major`` consecutive quartets of an accumulator: loads that coalesce."""
    nbf, nbs, nks, nkf = pass_dims(program)
    qb, stride = pass_quartets(program), _pass_stride(program)
    if not qb:
        raise ValueError(f'{program.name}: one quartet of the side passes needs {8 * stride} bytes of shared '
                         f'memory, above {PASS_SHARED_BYTES}')
    name = f'fr_passes_{program.name}_{"cart" if program.cart else "sph"}{"_am" if acc_major else ""}'
    if acc_major:
        split, start = f'const int v = it / {qb}, ql = it - v * {qb};', f'acc + (long)v * nq + q, (long){nks} * nq'
    else:
        split, start = f'const int ql = it / {nks}, v = it - ql * {nks};', f'acc + q * {nbs * nks} + v, {nks}'
    L = [_prelude()]
    L += _side_function(program, 'bra', f'{name}_bra')
    L += _side_function(program, 'ket', f'{name}_ket')
    L += [f'extern "C" __global__ void __launch_bounds__({PASS_THREADS}) {name}(',
          '    const double* __restrict__ acc, const double* __restrict__ ab, const double* __restrict__ cd,',
          '    double* __restrict__ out, int nq) {',
          '  extern __shared__ double fr_smem[];',
          f'  const long q0 = (long)blockIdx.x * {qb};',
          f'  for (int it = threadIdx.x; it < {qb * nks}; it += blockDim.x) {{',
          f'    {split}',
          '    const long q = q0 + ql;',
          f'    if (q < nq) {name}_bra({start}, ab[3 * q], ab[3 * q + 1], ab[3 * q + 2],',
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
