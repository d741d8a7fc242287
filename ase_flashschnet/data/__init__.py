"""Weights and structures of the trained models that ship with the package (see ``ase_flashschnet.shipped``)."""
