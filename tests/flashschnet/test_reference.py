"""The C-alpha mapping: the force maps and their consistency."""
import numpy as np
import pytest

from ase_flashschnet.train.mapping import RESIDUE_TYPES, Residue, calpha_map, force_map_problems

KJ_PER_MOL_PER_EV = 96.485332  # CODATA, independent of ase.units


# ---- the maps, without OpenMM ----

def _toy_residues():
    """Two residues of four atoms: N, CA, HA (constrained to CA), C."""
    return [Residue("GLY", (("N", 0), ("CA", 1), ("HA", 2), ("C", 3))),
            Residue("ALA", (("N", 4), ("CA", 5), ("HA", 6), ("C", 7)))]


def test_aggregate_sums_the_residue_and_slice_takes_the_calpha():
    forces = np.random.default_rng(0).normal(size=(5, 8, 3))
    aggregate = calpha_map(_toy_residues(), 8, "aggregate")
    sliced = calpha_map(_toy_residues(), 8, "slice")
    unit = 1.0 / KJ_PER_MOL_PER_EV / 10.0
    np.testing.assert_allclose(aggregate.forces(forces), np.stack([forces[:, :4].sum(1), forces[:, 4:].sum(1)], 1)
                               * unit, rtol=1e-6)
    np.testing.assert_allclose(sliced.forces(forces), forces[:, [1, 5]] * unit, rtol=1e-6)
    np.testing.assert_array_equal(aggregate.types, [RESIDUE_TYPES["GLY"], RESIDUE_TYPES["ALA"]])
    np.testing.assert_allclose(aggregate.positions(forces), forces[:, [1, 5]] * 10.0)


def test_only_aggregation_is_consistent_with_calpha_constraints():
    constrained = [(1, 2), (5, 6)]
    assert force_map_problems(calpha_map(_toy_residues(), 8, "aggregate"), constrained) == []
    assert force_map_problems(calpha_map(_toy_residues(), 8, "slice"), []) == []
    problems = force_map_problems(calpha_map(_toy_residues(), 8, "slice"), constrained)
    assert len(problems) == 1 and "2 constrained atom pair(s)" in problems[0]
    across = force_map_problems(calpha_map(_toy_residues(), 8, "aggregate"), [(3, 4)])
    assert len(across) == 1 and "3-4" in across[0]


def test_a_residue_without_a_type_or_calpha_is_refused():
    with pytest.raises(ValueError, match="no bead type"):
        calpha_map([Residue("HOH", (("O", 0),))], 1)
    with pytest.raises(ValueError, match="0 atoms named CA"):
        calpha_map([Residue("GLY", (("N", 0),))], 1)
    with pytest.raises(ValueError, match="force_map"):
        calpha_map(_toy_residues(), 8, "centre")
