"""From all-atom frames to coarse-grained ones: one bead per residue at its C-alpha.

The position map puts bead ``I`` on the C-alpha atom of residue ``I``. The
force map, a matrix ``G`` of shape (n_beads, n_atoms), gives each bead a
weighted sum of the all-atom forces:

* ``'aggregate'`` (the default): ``G[I, i] = 1`` for every atom ``i`` of
  residue ``I``, the sum of the residue's forces;
* ``'slice'``: ``G[I, i] = 1`` for the C-alpha atom only, its own force.

A mapped force estimates the mean force of the CG coordinates only when the
force map is *consistent* with the position map ``M`` (:func:`force_map_problems`):
``G @ M.T`` is the identity (Ciccotti, Kapral & Vanden-Eijnden 2005; Noid et
al. 2008), and, when the all-atom run holds bonds rigid, the atoms of each
constrained group share one weight in every row of ``G`` (Kraemer et al. 2023).
Both maps meet the first condition; with the X-H bonds constrained (OpenMM's
``HBonds``) only ``'aggregate'`` meets the second: the C-alpha is bonded to
its constrained H-alpha. ``docs/cg-mapping.md`` gives the reasoning.

Units are ASE's: positions in Angstrom, forces in eV/Angstrom; OpenMM's nm
and kJ/mol/nm convert with :data:`ANGSTROM_PER_NM` and :data:`EV_PER_ANGSTROM_PER_KJ_PER_MOL_NM`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import units

__all__ = ["RESIDUE_TYPES", "FORCE_MAPS", "ANGSTROM_PER_NM", "EV_PER_ANGSTROM_PER_KJ_PER_MOL_NM", "Residue",
           "CAlphaMap", "calpha_map", "force_map_problems"]

#: Bead type code of each residue name: the 20 standard amino acids numbered 1 to 20 in the
#: alphabetical order of their one-letter codes (ACDEFGHIKLMNPQRSTVWY). Force-field names of
#: protonation and disulfide variants share their residue's code.
RESIDUE_TYPES = {
    "ALA": 1, "CYS": 2, "ASP": 3, "GLU": 4, "PHE": 5, "GLY": 6, "HIS": 7, "ILE": 8, "LYS": 9, "LEU": 10,
    "MET": 11, "ASN": 12, "PRO": 13, "GLN": 14, "ARG": 15, "SER": 16, "THR": 17, "VAL": 18, "TRP": 19, "TYR": 20,
    "CYX": 2, "ASH": 3, "GLH": 4, "HID": 7, "HIE": 7, "HIP": 7, "LYN": 9,
}

FORCE_MAPS = ("aggregate", "slice")

ANGSTROM_PER_NM = 10.0
#: One kJ/mol/nm in eV/Angstrom (about 1.036e-3).
EV_PER_ANGSTROM_PER_KJ_PER_MOL_NM = units.kJ / units.mol / ANGSTROM_PER_NM


@dataclass(frozen=True)
class Residue:
    """A residue of the all-atom topology: its name and its atoms' (name, index) pairs."""

    name: str
    atoms: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class CAlphaMap:
    """The C-alpha map of one molecule: ``calpha`` (n_beads,) atom index of each bead,
    ``force_matrix`` (n_beads, n_atoms) the force map's weights, ``types`` and
    ``bead_names`` (n_beads,) as the dataset stores them."""

    calpha: np.ndarray
    force_matrix: np.ndarray
    types: np.ndarray
    bead_names: np.ndarray
    force_map: str

    @property
    def position_matrix(self) -> np.ndarray:
        """``M``, the position map as a matrix: 1 at each bead's C-alpha."""
        matrix = np.zeros_like(self.force_matrix)
        matrix[np.arange(self.calpha.size), self.calpha] = 1.0
        return matrix

    def positions(self, atom_positions_nm: np.ndarray) -> np.ndarray:
        """Bead positions (..., n_beads, 3) in Angstrom from atom positions (..., n_atoms, 3) in nm."""
        return np.asarray(atom_positions_nm)[..., self.calpha, :] * ANGSTROM_PER_NM

    def forces(self, atom_forces_kj_mol_nm: np.ndarray) -> np.ndarray:
        """Bead forces (..., n_beads, 3) in eV/Angstrom from atom forces (..., n_atoms, 3) in kJ/mol/nm."""
        mapped = np.einsum("Ii,...id->...Id", self.force_matrix, np.asarray(atom_forces_kj_mol_nm, dtype=np.float64))
        return mapped * EV_PER_ANGSTROM_PER_KJ_PER_MOL_NM


def calpha_map(residues: list[Residue], n_atoms: int, force_map: str = "aggregate") -> CAlphaMap:
    """The C-alpha map of a chain of ``residues`` (in chain order) among ``n_atoms`` atoms.

    ``ValueError`` for a residue without exactly one atom named ``CA`` or with
    a name missing from :data:`RESIDUE_TYPES`, and for an unknown ``force_map``.
    """
    if force_map not in FORCE_MAPS:
        raise ValueError(f"force_map must be one of {FORCE_MAPS}, got {force_map!r}")
    calpha, types, names = [], [], []
    force_matrix = np.zeros((len(residues), n_atoms))
    for bead, residue in enumerate(residues):
        if residue.name not in RESIDUE_TYPES:
            raise ValueError(f"residue {bead + 1} is {residue.name!r}, which has no bead type "
                             f"(known: {', '.join(sorted(RESIDUE_TYPES))})")
        ca = [index for name, index in residue.atoms if name == "CA"]
        if len(ca) != 1:
            raise ValueError(f"residue {bead + 1} ({residue.name}) has {len(ca)} atoms named CA, needs exactly one")
        calpha.append(ca[0])
        types.append(RESIDUE_TYPES[residue.name])
        names.append(f"{residue.name}{bead + 1}")
        members = [index for _, index in residue.atoms] if force_map == "aggregate" else ca
        force_matrix[bead, members] = 1.0
    return CAlphaMap(np.array(calpha), force_matrix, np.array(types, dtype=np.int64), np.array(names), force_map)


def force_map_problems(mapping: CAlphaMap, constraints) -> list[str]:
    """Why ``mapping``'s force map is not consistent with its position map, if it is not.

    ``constraints`` are the (i, j) atom pairs the all-atom run holds at fixed
    distance. Returns an empty list for a consistent map, else one line per
    problem: ``G @ M.T`` differing from the identity, or a constrained pair
    whose two atoms get different weights for some bead (the mapped force
    then misses the constraint force, which the engine does not report).
    """
    problems = []
    overlap = mapping.force_matrix @ mapping.position_matrix.T
    if not np.array_equal(overlap, np.eye(len(mapping.calpha))):
        problems.append("G @ M.T is not the identity: a bead's force picks up other beads' C-alpha forces")
    uneven = [(int(i), int(j)) for i, j in constraints
              if not np.array_equal(mapping.force_matrix[:, i], mapping.force_matrix[:, j])]
    if uneven:
        shown = ", ".join(f"{i}-{j}" for i, j in uneven[:5])
        more = f" and {len(uneven) - 5} more" if len(uneven) > 5 else ""
        problems.append(f"{len(uneven)} constrained atom pair(s) weighted unequally ({shown}{more}): "
                        f"the mapped forces miss their constraint forces")
    return problems
