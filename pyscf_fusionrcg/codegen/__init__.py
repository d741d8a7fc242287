"""Emit CUDA C++ from an orchestrated :class:`~pyscf_fusionrcg.ir.Program`.

One work item = one contracted shell quartet (and, for general contraction,
``group`` of its contracted-function tuples).  The emitted per-quartet function
loops over the primitive quartets, computes the per-primitive symbols of
``ir.Sym`` and the Boys values (``csrc/fusionrcg/boys.cuh``), runs the
primitive stage, accumulates, then runs the contracted stage (HRR and the fused
spherical transforms) and writes the finished block.

The phases, one module each, in the order data flows through them:

* :mod:`.variant`: what besides the program changes the code (tier, operator,
  contraction shape, form, contracted stage, digestion) and the kernel's name;
* :mod:`.statements`: the flat statement sequence, its memory slots and levels;
* :mod:`.encoding`: the op stream of the table and levels forms;
* :mod:`.geometry`: threads per block, shared memory and scratch of a launch;
* :mod:`.emit`: the per-quartet function, the class kernels, the g++ source;
* :mod:`.side_passes`: the pairmap contracted stage's bra and ket passes;
* :mod:`.jkernel`: the J engine's kernels (:class:`~pyscf_fusionrcg.jengine.JProgram`).

Nothing here caches on disk or compiles: :mod:`pyscf_fusionrcg.kernels` does.

Where the temporaries live is the *tier*:

* ``register``: plain locals (SSA ``const double``), accumulators declared
  before the primitive loops;
* ``shared``: per-thread slices of dynamic shared memory, slot ``k`` of a
  thread at ``smem[k*block + threadIdx.x]``;
* ``warp``: one *warp* per work item, its slots in shared memory (slot ``k``
  at ``smem[warp*n_slots + k]``): the lanes split the work of the class, so a
  class whose live set is far too large for one thread's share of shared
  memory still runs from shared memory;
* ``global``: global scratch.  In the levels form a warp runs one work item
  as in the warp tier, its slots at
  ``scratch[(blockIdx.x*warps + warp)*n_slots + k]``; in the straight and
  table forms (one thread per item) a slab per block laid out
  ``[slot][thread]``, so that a warp's accesses to one slot coalesce.

How the ops are executed is the *form*:

* ``straight``: one C statement per op, in the program's liveness-orchestrated
  order, so the live set the compiler sees is the one the scheduler
  minimised.  Memory slots are accessed through a ``volatile`` pointer with
  compile-time offsets: without it ptxas hoists loads far ahead and spills
  the registers the memory tier is meant to save.
* ``table`` (memory tiers): the same ops, with the same slots, as an op
  stream that a small generic loop interprets: straight-line code of large
  classes costs ptxas far too long and would not fit any instruction cache,
  whereas an op stream is data that all warps share through the data caches.
* ``levels`` (warp and global tiers): the same ops cut into levels of
  independent ops that the 32 lanes of a warp share, laid out so that every
  word the interpreter needs is one coalesced load away.

How the contracted stage runs is the variant's ``ctr``: ``'ops'`` (the
program's ops, in the form above) or, for the levels form with one
contraction tuple, ``'pairmap'``: the kernel stops after the primitive stage
and writes each quartet's accumulators, ``out[q * n_acc + k]``, for the side
passes.

Output layout (the kernel's ``out``): ``out[e * nq + q]`` for element ``e`` of
the block of quartet ``q`` of the launch, ``e`` the C-order flat index of the
full block ``(na*ni, nb*nj, nc*nk, nd*nl)`` (``na`` .. ``nd`` contracted
functions per shell), i.e. ``[component][quartet]``: consecutive threads write
consecutive addresses.  A derivative program (``ir.DerivProgram``) has one
more, leading axis, the (centre, direction) component: its block is
``(3 * centres, na*ni, nb*nj, nc*nk, nd*nl)``; its raised terms' accumulates
take the weight times twice an exponent (straight form: a local of the
primitive loop; op streams: reserved slots of their own, see encoding.py),
and its kernels a name of their own (``fr_deriv_<centres>_...``).
"""
from .emit import emit_kernel_source, host_source, quartet_function
from .encoding import (LEVEL_ROW_BITS, PAIR_SLOTS, EncodingOverflow, Table, encode_table, level_records,
                       level_rows)
from .geometry import (BLOCK, GLOBAL_BLOCK, LEVELS_THREADS_PER_SM, SHARED_BYTES_MAX, WARP_BLOCK_WARPS,
                       block_size, items_per_block, min_blocks, scratch_doubles, scratch_per_block,
                       shared_block, shared_bytes, warp_block)
from .statements import (LEVEL_OPS_PER_LANE, LEVEL_WIDTH, Sequence, assign_slots, level_schedule,
                       level_sequence, sequence)
from .jkernel import J_ACC_MAX, j_block_dims, j_block_sizes, j_kernel_name, j_kernel_source
from .side_passes import (PASS_SHARED_BYTES, PASS_THREADS, pass_cost, pass_dims, pass_quartets,
                          pass_shared_bytes, side_pass_source)
from .variant import (CTR_MODES, FORMS, LEVEL_OP_WORDS, TIERS, Variant, kernel_name, level_op_words,
                      make_variant, omega_kind, tuples_per_thread)

__all__ = ['emit_kernel_source', 'host_source', 'quartet_function', 'LEVEL_ROW_BITS', 'PAIR_SLOTS',
           'EncodingOverflow', 'Table', 'encode_table', 'level_records', 'level_rows', 'BLOCK', 'GLOBAL_BLOCK',
           'LEVELS_THREADS_PER_SM',
           'SHARED_BYTES_MAX', 'WARP_BLOCK_WARPS', 'block_size', 'items_per_block', 'min_blocks',
           'scratch_doubles', 'scratch_per_block', 'shared_block', 'shared_bytes', 'warp_block',
           'LEVEL_OPS_PER_LANE', 'LEVEL_WIDTH', 'Sequence', 'assign_slots', 'level_schedule',
           'level_sequence', 'sequence', 'PASS_SHARED_BYTES', 'PASS_THREADS', 'pass_cost', 'pass_dims',
           'pass_quartets', 'pass_shared_bytes', 'side_pass_source', 'CTR_MODES', 'FORMS', 'LEVEL_OP_WORDS',
           'TIERS', 'Variant', 'kernel_name', 'level_op_words', 'make_variant', 'omega_kind',
           'tuples_per_thread', 'J_ACC_MAX', 'j_block_dims', 'j_block_sizes', 'j_kernel_name', 'j_kernel_source']
