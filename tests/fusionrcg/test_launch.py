"""Quartet ordering for launch (launch.orient, launch.primitive_order) on the CPU,
with the host copy of the shell keys (launch.ShellKeys)."""
import numpy as np
from pyscf import gto

from pyscf_fusionrcg import host, launch
from pyscf_fusionrcg.screening import build_tasks


def test_orientation_and_primitive_order_on_the_cpu():
    """orient with ShellKeys swaps the pairs host.HostEngine.orient swaps, and
    primitive_order sorts by the shells' primitive-count ranks, then by the
    shells: the order in which a plan launches a class."""
    mol = gto.M(atom='O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692; O 2.8 0 0; H 3.4 0.6 0.3', spin=1,
                basis='def2-TZVP', verbose=0)
    keys = launch.ShellKeys(mol)
    engine = host.HostEngine(mol)
    rng = np.random.default_rng(3)
    swapped = False
    for t in build_tasks(mol, None, density_bound=1.0):
        q = t.quartets[:, list(rng.permutation([0, 1]) if rng.random() < 0.5 else [0, 1]) + [2, 3]]
        oriented, swap_bra, swap_ket = launch.orient(keys, q)
        want, want_bra, want_ket = engine.orient(q)[:3]
        np.testing.assert_array_equal(oriented, want)
        np.testing.assert_array_equal(swap_bra, want_bra)
        np.testing.assert_array_equal(swap_ket, want_ket)
        swapped |= bool(swap_bra.any() or swap_ket.any())
        ordered = oriented[launch.primitive_order(keys, oriented)]
        key = np.concatenate([keys.nprim_rank[ordered], ordered], axis=1)
        assert all(tuple(a) <= tuple(b) for a, b in zip(key[:-1].tolist(), key[1:].tolist()))
        assert sorted(map(tuple, ordered.tolist())) == sorted(map(tuple, oriented.tolist()))
    assert swapped
