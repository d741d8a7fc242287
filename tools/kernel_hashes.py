"""Hash every generated text and op stream of a set of classes, to check that a
restructuring changes no kernel.

    python tools/kernel_hashes.py OUT.json [--compare BEFORE.json]

For every class below (spherical and Cartesian, the three operators, one and
several contraction tuples) it generates, without any disk cache, the kernel
source of each tier and form the class can take, the digesting variant, the
op-stream tables of the table and levels forms, the side passes and the g++
host source, and writes ``{name: sha256}``; likewise the derivative kernels
(each tier, its form as tiers.derivative_variant picks it) of the smaller
classes.  ``--compare`` lists what differs from an earlier run (missing, new,
changed) and exits 1 if anything changed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

os.environ["FUSIONRCG_PREPARED"] = "0"      # generate everything afresh

import numpy as np  # noqa: E402

from pyscf_fusionrcg import codegen, host, tiers  # noqa: E402

CLASSES = [(0, 0, 0, 0), (1, 0, 1, 0), (1, 1, 1, 1), (2, 1, 1, 0), (2, 2, 1, 1), (2, 2, 2, 0),
           (3, 1, 2, 0), (3, 2, 1, 1), (2, 2, 2, 2), (3, 3, 1, 0), (4, 0, 2, 2), (3, 3, 2, 1)]
NCTRS = [(1, 1, 1, 1), (2, 1, 1, 1), (1, 1, 2, 2)]
#: Classes whose derivative kernels are hashed (their programs are ~7x larger).
DERIV_CLASSES = [ls for ls in CLASSES if sum(ls) <= 6]


def _digest(obj) -> str:
    h = hashlib.sha256()
    if isinstance(obj, str):
        h.update(obj.encode())
    else:
        for a in obj:
            if isinstance(a, np.ndarray):
                h.update(str(a.dtype).encode() + np.ascontiguousarray(a).tobytes())
            else:
                h.update(repr(a).encode())
    return h.hexdigest()


def _shapes():
    """(nctr, omega) pairs: every contraction shape with 1/r, one tuple with each
    range-separated operator."""
    for nctr in NCTRS:
        for omega in (0.0, 0.3, -0.3):
            if not omega or nctr == NCTRS[0]:
                yield nctr, omega


def _variants(program, nctr, omega):
    """Every (label, variant) the class can take: the routed-by-size default and
    each tier with each form it allows."""
    out = [("static", tiers.variant_for(program, tiers.choose_tier(program), omega, nctr))]
    for tier in codegen.TIERS:
        forms = {"register": ("straight",), "shared": ("straight", "table"), "warp": ("levels",),
                 "global": ("table", "levels")}[tier]
        for form in forms:
            for ctr in ("ops", "pairmap"):
                try:
                    v = codegen.make_variant(program, tier, omega, nctr, form, ctr)
                except ValueError:
                    continue
                out.append((f"{tier}/{form}/{ctr}", v))
    if all(n == 1 for n in nctr):
        out.append(("digest", codegen.Variant("register", codegen.omega_kind(omega), nctr, 1, "straight",
                                              "ops", True)))
    return out


def hashes() -> dict:
    res = {}
    for ls in CLASSES:
        for cart in (False, True):
            program = host.get_program(*ls, cart=cart)
            tag = f"{''.join(map(str, ls))}{'c' if cart else 's'}"
            for nctr, omega in _shapes():
                for label, v in _variants(program, nctr, omega):
                    key = f"{tag}|{''.join(map(str, nctr))}|{omega}|{label}"
                    if label != "static" and v.tier in ("shared", "warp") and v.form != "straight":
                        if (codegen.shared_block(program, v) if v.tier == "shared"
                                else codegen.warp_block(program, v)) < 32:
                            continue
                    if v.tier == "shared" and v.form == "straight" and codegen.shared_block(program, v) < 32:
                        continue
                    try:
                        src, name = codegen.emit_kernel_source(program, v)
                    except ValueError as exc:
                        res[key] = f"refused: {exc}"
                        continue
                    res[key] = _digest(name + "\n" + src)
                    if v.form in ("table", "levels"):
                        res[key + "|table"] = _digest(codegen.encode_table(program, v).stream_args())
                    res[key + "|host"] = _digest(codegen.host_source([(program, v)]))
            try:
                src, name = codegen.side_pass_source(program)
                res[f"{tag}|passes"] = _digest(name + "\n" + src)
            except ValueError as exc:
                res[f"{tag}|passes"] = f"refused: {exc}"
    res.update(derivative_hashes())
    return res


def derivative_hashes() -> dict:
    """The derivative kernels' texts and host sources (tiers.derivative_variant)."""
    res = {}
    for ls in DERIV_CLASSES:
        for cart in (False, True):
            program = host.get_derivative_program(*ls, cart=cart)
            tag = f"{''.join(map(str, ls))}{'c' if cart else 's'}|deriv"
            for nctr, omega in _shapes():
                for tier in codegen.TIERS:
                    try:
                        v = tiers.derivative_variant(program, tier, omega, nctr)
                    except ValueError:
                        continue
                    key = f"{tag}|{''.join(map(str, nctr))}|{omega}|{tier}/{v.form}"
                    src, name = codegen.emit_kernel_source(program, v)
                    res[key] = _digest(name + "\n" + src)
                    if v.form == "levels":
                        res[key + "|table"] = _digest(codegen.encode_table(program, v).stream_args())
                    res[key + "|host"] = _digest(codegen.host_source([(program, v)]))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--compare", help="an earlier run's JSON")
    args = p.parse_args(argv)
    res = hashes()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    print(f"{len(res)} texts and tables hashed into {args.out}")
    if not args.compare:
        return 0
    with open(args.compare) as f:
        before = json.load(f)
    missing = sorted(set(before) - set(res))
    new = sorted(set(res) - set(before))
    changed = sorted(k for k in set(res) & set(before) if res[k] != before[k])
    print(f"same {len(set(res) & set(before)) - len(changed)}, changed {len(changed)}, "
          f"missing {len(missing)}, new {len(new)}")
    for title, keys in (("changed", changed), ("missing", missing), ("new", new)):
        for k in keys[:40]:
            print(f"  {title}: {k}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
