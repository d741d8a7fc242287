"""Op-stream encoding of the table and levels forms.

The same statement sequence as the straight form, with the same slots,
encoded as uint32 words that a small generic loop in ``eri_common.cuh``
interprets (:func:`encode_table`); in the levels form laid out level by
level so that each lane of a warp finds its ops at fixed offsets
(:func:`level_records`).  The kernel text then depends on the class only
through its Boys order, contraction shape, operator and tier, so few kernels
compile.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from .. import ir
from .statements import (_ACC, _BOYS, _LIN, _OUTPUT, _ZERO, LEVEL_OPS_PER_LANE, _assign, _op_words, _permuted,
                       level_sequence, sequence)
from .variant import Variant, level_op_words

#: Bits of each op row's width in a level's shape word (FR_LEVEL_ROW_BITS, emitted):
#: ops | width of row k << (8 + LEVEL_ROW_BITS * k), so at most four rows a lane.
LEVEL_ROW_BITS = 5

# Table form: reserved slots.  Slot 0 holds 1.0, slots 1.. the ir.Sym values
# (slot = enum value), then the contraction weights of the group, then the
# Boys values (times the prefactor), then (derivative programs) the weights
# times twice the exponent of each weighted shell, then PAIR_SLOTS products
# coefficient x symbol; temporaries follow.
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


class EncodingOverflow(ValueError):
    """A program whose op stream does not fit the fields of the table and
    levels forms (slots, coefficients, terms of an op, pairs of a stage)."""


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


def weighted_accumulates(program: ir.Program) -> list:
    """The shells whose doubled exponent weighs some accumulate (a derivative
    program's raised terms, ``ir.Accumulate.weight``), ascending."""
    P = program.prim
    return sorted(set(P.arg[(P.kind == ir.ACCUMULATE) & (P.arg >= 0)].tolist()))


def _weight_slot0(program: ir.Program, group: int) -> int:
    """First slot of the exponent-weighted contraction weights: tuple ``g``'s
    weight times twice the exponent of shell ``weighted_accumulates()[n]``
    at ``_weight_slot0 + n * group + g``."""
    return _SYM_SLOTS + group + program.max_m + 1


def _pair_slot0(program: ir.Program, group: int) -> int:
    """First of the PAIR_SLOTS slots of the table and levels forms."""
    return _weight_slot0(program, group) + len(weighted_accumulates(program)) * group


def _reserved(program: ir.Program, group: int) -> int:
    return _pair_slot0(program, group) + PAIR_SLOTS


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
        raise EncodingOverflow(f'{program.name}: {len(coef_values)} distinct coefficients')
    if (n_slots > 1 << _SRC_BITS or prod(program.shape) * prod(variant.nctr) >= 1 << 26
            or _reserved(program, G) > 1 << (32 - _SRC_BITS)):
        raise EncodingOverflow(f'{program.name}: op stream field overflow')

    def cidx(c):
        return np.searchsorted(coef_values, c).astype(np.int64)

    pair0 = _pair_slot0(program, G)
    # an accumulate's weight slot, past the plain weight's by wshift[1 + its ir.Accumulate.weight]
    weighted = weighted_accumulates(program)
    wshift = np.zeros(5, dtype=np.int64)
    wshift[1 + np.array(weighted, dtype=np.int64)] = _weight_slot0(program, G) - _SYM_SLOTS + np.arange(
        len(weighted)) * G

    def encode(lo, hi):
        """(words, word offset of each op, words of each op, pairs) of seq[lo:hi]."""
        k = seq.kind[lo:hi]
        nt = np.diff(seq.ptr[lo:hi + 1])
        if (nt > 15).any():
            raise EncodingOverflow(f'{program.name}: an op with more than 15 terms')
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
                               cidx(np.ones(len(acc))) | (_SYM_SLOTS + g[acc]
                                                          + wshift[1 + seq.arg[lo:hi][acc]]) << 16,
                               cidx(seq.coef[tj]) | seq.sym[tj].astype(np.int64) << 16])
        pairs, which = np.unique(pair, return_inverse=True)
        if len(pairs) > PAIR_SLOTS:
            raise EncodingOverflow(f'{program.name}: {len(pairs)} coefficient-symbol pairs in a stage')
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


def _block_strides(program: ir.Program, nctr):
    """C-order strides of the full block's axes: a derivative program's
    leading component axis, then the four indices times their contracted
    functions."""
    lead = len(program.shape) - 4
    full = list(program.shape[:lead]) + [n * c for n, c in zip(program.shape[lead:], nctr)]
    return [prod(full[i + 1:]) for i in range(len(full))]
