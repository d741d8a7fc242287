"""Launch geometry of a variant: threads per block, shared memory, scratch.

Each function takes the program, the variant and, for the op-stream forms,
the variant's :class:`~.encoding.Table` (whose slot count sizes the memory
tiers); without it the table is encoded here.
"""
from __future__ import annotations

from functools import lru_cache

from .. import ir
from .encoding import Table, encode_table
from .statements import assign_slots
from .variant import Variant

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
WARP_BLOCK_WARPS = 4
#: Blocks an SM can hold, and the shared memory the driver reserves per block.
SM_BLOCKS_MAX = 32
BLOCK_RESERVED_SHARED = 1024
#: Threads per SM the levels form leaves registers for: 8 warps, 2 on each of
#: the SM's 4 register files, give 255 a thread (the prologue and the fetched
#: ops of two levels take ~180; 3 warps a file leave 168, and nvcc spills).
LEVELS_THREADS_PER_SM = 256


def scratch_doubles(program: ir.Program, variant: Variant, table: Table = None) -> int:
    """Doubles of shared or global scratch one thread needs (0 for registers)."""
    if variant.tier == 'register':
        return 0
    if variant.form in ('table', 'levels'):
        return (table or _encoded(program, variant)).n_slots
    return assign_slots(program, variant.group)[1]


@lru_cache(maxsize=8)
def _encoded(program: ir.Program, variant: Variant) -> Table:
    return encode_table(program, variant)


def shared_block(program: ir.Program, variant: Variant, table: Table = None) -> int:
    """Threads per block of the shared tier (< 32 when one warp cannot fit)."""
    per_thread = 8 * scratch_doubles(program, variant, table)
    fit = SHARED_BYTES_MAX // max(per_thread, 1) // 32 * 32
    return min(SHARED_BLOCK_MAX, fit)


def warp_block(program: ir.Program, variant: Variant, table: Table = None) -> int:
    """Threads per block of the warp tier (0 when one warp's slots do not fit).

    The warps per block (at most ``WARP_BLOCK_WARPS``) that let the most warps
    reside on an SM (by shared memory and by ``LEVELS_THREADS_PER_SM``): the
    interpreter waits on memory, and only other warps hide that (four 29 KB
    warps of (gd|fd) leave one block, four warps, per SM; blocks of one warp
    leave seven)."""
    per_warp = 8 * scratch_doubles(program, variant, table)

    def resident(w):
        return w * min(SM_BLOCKS_MAX, SM_SHARED_BYTES // (w * per_warp + BLOCK_RESERVED_SHARED),
                       LEVELS_THREADS_PER_SM // (32 * w))

    fits = [w for w in range(1, WARP_BLOCK_WARPS + 1) if w * per_warp <= SHARED_BYTES_MAX]
    return 32 * max(fits, key=lambda w: (resident(w), w)) if fits else 0


def block_size(program: ir.Program, variant: Variant, table: Table = None) -> int:
    if variant.tier == 'shared':
        return shared_block(program, variant, table)
    if variant.tier == 'warp':
        return warp_block(program, variant, table)
    if variant.form == 'levels':
        return 32 * WARP_BLOCK_WARPS
    return GLOBAL_BLOCK if variant.tier == 'global' else BLOCK


def items_per_block(program: ir.Program, variant: Variant, table: Table = None) -> int:
    """Work items a block runs at once: one per warp in the levels form."""
    block = block_size(program, variant, table)
    return block // 32 if variant.form == 'levels' else block


def scratch_per_block(program: ir.Program, variant: Variant, table: Table = None) -> int:
    """Doubles of global scratch one block needs (0 outside the global tier)."""
    if variant.tier != 'global':
        return 0
    return scratch_doubles(program, variant, table) * items_per_block(program, variant, table)


def min_blocks(program: ir.Program, variant: Variant, table: Table = None) -> int:
    """Blocks per SM the compiler must leave registers for (``__launch_bounds__``).

    The levels form asks for as many blocks as its shared memory lets reside, up
    to ``LEVELS_THREADS_PER_SM`` threads (fewer registers make nvcc spill the
    per-primitive prologue): lanes waiting on memory need other warps to hide
    behind.
    """
    if variant.form != 'levels':
        return 1
    fit = SM_SHARED_BYTES // (shared_bytes(program, variant, table) + BLOCK_RESERVED_SHARED)
    return max(1, min(fit, SM_BLOCKS_MAX, LEVELS_THREADS_PER_SM // block_size(program, variant, table)))


def shared_bytes(program: ir.Program, variant: Variant, table: Table = None) -> int:
    """Dynamic shared memory of a launch (the shared and warp tiers)."""
    if variant.tier == 'shared':
        return 8 * scratch_doubles(program, variant, table) * shared_block(program, variant, table)
    if variant.tier == 'warp':
        return 8 * scratch_doubles(program, variant, table) * (warp_block(program, variant, table) // 32)
    return 0
