"""Training a coarse-grained SchNet by force matching.

Modules:

* :mod:`.dataset`: the ``flashschnet-cg-v1`` dataset format (``docs/cg-dataset.md``),
  its checks and the split by trajectory.
"""
from .dataset import CGDataset, load_dataset, save_dataset

__all__ = ["CGDataset", "load_dataset", "save_dataset"]
