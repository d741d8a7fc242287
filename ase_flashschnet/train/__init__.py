"""Training a coarse-grained SchNet by force matching.

Modules:

* :mod:`.dataset`: the ``flashschnet-cg-v1`` dataset format (``docs/cg-dataset.md``),
  its checks and the split by trajectory;
* :mod:`.prior_fit`: bond, angle and repulsion priors fitted to a dataset
  (Boltzmann inversion per bead-type class).
"""
from .dataset import CGDataset, load_dataset, save_dataset

__all__ = ["CGDataset", "load_dataset", "save_dataset"]
