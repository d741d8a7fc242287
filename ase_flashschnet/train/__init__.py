"""Training a coarse-grained SchNet by force matching.

    from ase_flashschnet.train import TrainConfig, train
    result = train("protein.npz", TrainConfig(out_dir="run1", epochs=50))
    model = load_model(result.model_file)

Modules:

* :mod:`.dataset`: the ``flashschnet-cg-v1`` dataset format (``docs/cg-dataset.md``),
  its checks and the split by trajectory;
* :mod:`.prior_fit`: bond, angle and repulsion priors fitted to a dataset
  (Boltzmann inversion per bead-type class);
* :mod:`.config`: ``TrainConfig``, the settings of a run, checked;
* :mod:`.trainer`: ``train``, the force-matching loop;
* :mod:`.checkpoint`: what a run is resumed from;
* :mod:`.metrics`: the per-epoch CSV and the loss plot;
* :mod:`.validation`: a trained model's simulations against the reference:
  RMSD to the most populated structure, folded fraction, radius of gyration
  and end-to-end distance, their Jensen-Shannon divergences and free energy
  surfaces, and whether the sampling suffices (``compare`` writes it all).
* :mod:`.mapping`: all-atom frames to C-alpha beads, the force maps and their
  consistency (``docs/cg-mapping.md``);
* :mod:`.reference`: all-atom reference data from OpenMM (optional), and
  :mod:`.reference_cli`, its command ``flashschnet-cln025-reference``
  (``docs/cg-reference.md``);
* :mod:`.cln025`: the CLN025 model from reference data through training to
  validation, in stages of at most 9 minutes of one GPU that resume
  (:mod:`.cln025_validate`, the validation stage; :mod:`.pipeline`, the
  manifest of what each stage did; :mod:`.cln025_cli`, the command
  ``flashschnet-cln025``; ``docs/cln025.md``).
"""
from .config import TrainConfig
from .dataset import CGDataset, load_dataset, save_dataset
from .trainer import TrainResult, train

__all__ = ["train", "TrainConfig", "TrainResult", "CGDataset", "load_dataset", "save_dataset"]
