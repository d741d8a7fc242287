"""Shared fixtures: a synthetic molecule that holds every class l <= LMAX,
and ``emulation_dir``, a module's folder for kernels built with g++ under
the emulation (skipped without g++).

Helpers are exposed through the ``synth`` fixture (conftest modules of
other test folders share the module name, so they are not imported).

Two shells per l, each on its own atom at a random position (shells ``2l``
and ``2l+1``), so a class has 16 quartets; ``Synth.assemble`` lays them out
as one array like a ``shls_slice`` call would.  Primitive counts differ between the two
shells of an l (1 and 2: the host batches mixed counts) except for l = 1
and 3, whose shells are generally contracted (2 primitives, nctr = 2).
"""
import os
import pathlib
import tempfile

import numpy as np
import pytest
from pyscf import gto

from emulation import GXX

# The tests exercise the generators, so they build every program, table and
# source instead of loading them from the user's cache (nor do they fill it);
# test_prepared.py turns the cache on in a folder of its own.
os.environ.setdefault('FUSIONRCG_PREPARED', '0')

LMAX = 5
GENERAL = (1, 3)


def _shell(rng, l, nprim):
    exps = np.sort(rng.uniform(0.15, 4.0, nprim))[::-1]
    nctr = 2 if l in GENERAL else 1
    coefs = rng.uniform(0.2, 1.0, (nprim, nctr))
    return [l] + [[float(e)] + [float(c) for c in row] for e, row in zip(exps, coefs)]


def synthetic_mol(cart=False, lmax=LMAX, seed=7):
    rng = np.random.default_rng(seed)
    atoms, basis = [], {}
    for l in range(lmax + 1):
        for k, nprim in enumerate((2, 2) if l in GENERAL else (1, 2)):
            label = f'H{2 * l + k}'
            atoms.append((label, tuple(rng.uniform(-1.5, 1.5, 3))))
            basis[label] = [_shell(rng, l, nprim)]
    return gto.M(atom=atoms, basis=basis, unit='Bohr', cart=cart, spin=None, verbose=0)


class Synth:
    """Synthetic molecules and the libcint reference, per class."""
    def __init__(self, lmax=LMAX):
        self.lmax = lmax
        self._mols = {}

    def mol(self, cart=False):
        if cart not in self._mols:
            self._mols[cart] = synthetic_mol(cart=cart, lmax=self.lmax)
        return self._mols[cart]

    @staticmethod
    def quartets(ls):
        """The 16 quartets of class ``ls``, C order over the two shells per index."""
        pairs = [(2 * l, 2 * l + 1) for l in ls]
        return np.array(np.meshgrid(*pairs, indexing='ij')).reshape(4, -1).T

    @staticmethod
    def assemble(blocks):
        """(16, da, db, dc, dd) blocks -> the (2da, 2db, 2dc, 2dd) shls_slice layout."""
        n, da, db, dc, dd = blocks.shape
        b = blocks.reshape(2, 2, 2, 2, da, db, dc, dd).transpose(0, 4, 1, 5, 2, 6, 3, 7)
        return b.reshape(2 * da, 2 * db, 2 * dc, 2 * dd)

    @classmethod
    def reference(cls, mol, ls, omega=0.0):
        """libcint, quartet by quartet (a ``shls_slice`` call costs ~25x more
        here, in page faults of libcint's buffers)."""
        intor = 'int2e_cart' if mol.cart else 'int2e_sph'
        with mol.with_range_coulomb(omega):
            return cls.assemble(np.array([mol.intor_by_shell(intor, tuple(q))
                                          for q in cls.quartets(ls)]))

    @staticmethod
    def rel_err(a, ref):
        return np.abs(a - ref).max() / np.abs(ref).max()


@pytest.fixture(scope='session')
def synth():
    return Synth()


@pytest.fixture(scope='module')
def emulation_dir():
    """A temporary folder for one test module's kernels built under the
    emulation (tests/fusionrcg/emulation.py); the module is skipped without g++."""
    if GXX is None:
        pytest.skip('g++ is not installed')
    with tempfile.TemporaryDirectory() as tmp:
        yield pathlib.Path(tmp)
