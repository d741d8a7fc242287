"""The flat statement sequence of a program, its slots and its levels.

:func:`sequence` flattens a program for a work item of ``group`` contraction
tuples (accumulators zeroed, the primitive-loop body, the contracted stage
once per tuple); :func:`assign_slots` maps its temporaries to memory slots by
a linear scan (a slot is reused once its value is dead), so that a thread's
footprint is the orchestrated peak live set; :func:`level_sequence` cuts it
into levels of independent statements that the lanes of a warp share.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .. import ir

#: The most ops of one level: two per lane of a warp, enough to fill the warp,
#: few enough to keep the live set near the orchestrated peak.
LEVEL_OPS_PER_LANE = 2          # FR_LEVEL_OPS of eri_common.cuh (emitted)
LEVEL_WIDTH = 32 * LEVEL_OPS_PER_LANE
#: Doubles a warp's shared-memory access serves per wavefront (32 banks of
#: 4 bytes): lanes whose slots differ modulo this conflict.
SHARED_BANKS_64 = 16

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
