"""Per-class liveness report: ``python -m pyscf_fusionrcg.report --lmax L [--json]``.

For every class (la, lb, lc, ld) with all l <= L (spherical output):

* ``peak_live_naive``: naive level-by-level program, transforms at the end;
* ``peak_live_unfused``: orchestrated program, transforms at the end;
* ``peak_live``: orchestrated program with stepwise fusion (``host.get_program``);
* ``block_cart`` / ``block_sph``: Cartesian / spherical components of (ab|cd);
* ``tier``: ``pyscf_fusionrcg.tiers.choose_tier(program)``;
* ``registers`` / ``spill_bytes``: from ``tiers.compile_stats(program)`` where
  a GPU compiler is available, else None.

Peaks count one shell quartet: the temporaries of one primitive quartet plus
the accumulators during the primitive stage, then the contracted
intermediates (see ``schedule`` for the exact rule).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

from . import ir, tiers
from .ir import class_name, parse_class
from .host import get_program
from .schedule import naive, orchestrate, peak_live


def _gpu_stats(program):
    """(registers, spill_bytes) of the routed kernel; (None, None) without a GPU."""
    try:
        stats = tiers.compile_stats(program)
    except Exception:        # no GPU / no compiler on this machine: keys stay None
        return None, None
    if not stats:
        return None, None
    return stats.get('registers'), stats.get('spill_bytes')


def class_row(ls, gpu_stats=True) -> dict:
    """Report entry of one class (spherical output)."""
    prog = get_program(*ls)
    regs, spill = _gpu_stats(prog) if gpu_stats else (None, None)
    block_cart = block_sph = 1
    for l in ls:
        block_cart *= ir.ncart(l)
        block_sph *= ir.nsph(l)
    return {
        'class': class_name(ls),
        'peak_live_naive': peak_live(naive(*ls)),
        'peak_live_unfused': peak_live(orchestrate(*ls, fused=False)),
        'peak_live': peak_live(prog),
        'block_cart': block_cart,
        'block_sph': block_sph,
        'tier': str(tiers.choose_tier(prog)),
        'registers': regs,
        'spill_bytes': spill,
    }


KEYS = ('class', 'peak_live_naive', 'peak_live_unfused', 'peak_live', 'block_cart',
        'block_sph', 'tier', 'registers', 'spill_bytes')


def rows(lmax: int = None, classes=None, gpu_stats=True):
    """Entries for every class with all l <= lmax, or for ``classes``.

    ``gpu_stats=False`` skips ``tiers.compile_stats`` (it compiles a kernel
    per class where a CUDA compiler is installed)."""
    todo = classes if classes else itertools.product(range(lmax + 1), repeat=4)
    return [class_row(tuple(ls), gpu_stats) for ls in todo]


def format_table(entries) -> str:
    head = ('class', 'naive', 'unfused', 'fused', 'cart', 'sph', 'tier', 'regs', 'spill')
    lines = ['%-6s %9s %9s %9s %7s %6s %-10s %5s %6s' % head]
    for r in entries:
        vals = ['-' if r[k] is None else r[k] for k in KEYS]
        lines.append('%-6s %9s %9s %9s %7s %6s %-10s %5s %6s' % tuple(vals))
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--lmax', type=int, default=2, help='every class with all l <= LMAX')
    ap.add_argument('--class', dest='classes', action='append', default=[],
                    help='only these classes, e.g. --class gggg (repeatable)')
    ap.add_argument('--json', action='store_true', help='a JSON list, one object per class')
    ap.add_argument('--no-gpu-stats', action='store_true',
                    help='skip tiers.compile_stats (registers / spill bytes stay empty)')
    args = ap.parse_args(argv)
    entries = rows(args.lmax, [parse_class(c) for c in args.classes], not args.no_gpu_stats)
    if args.json:
        json.dump(entries, sys.stdout, indent=1)
        sys.stdout.write('\n')
    else:
        print(format_table(entries))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
