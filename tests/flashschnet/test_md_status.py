"""The MD status vector has one layout, defined in ``ase_flashschnet.step_status``:
the CUDA kernels agree with it, and no other module defines slots of its own."""
import re
from pathlib import Path

import numpy as np
import torch

from ase_flashschnet import step_status
from ase_flashschnet.step_status import NON_FINITE, TOO_FAST, first_bad_step, new_md_status, replica_slots

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ase_flashschnet"


def test_kernel_slots_match_the_python_layout():
    source = (REPO / "csrc" / "flashschnet" / "geometry.cu").read_text()
    defined = {name: int(value) for name, value in re.findall(r"#define NBR_(STAT_\w+) (\d+)", source)}
    assert defined, "no NBR_STAT_* slots found in geometry.cu"
    assert defined == {name: getattr(step_status, name) for name in defined}
    assert step_status.STAT_SIZE == max(defined.values()) + 1


def test_no_other_module_defines_status_slots():
    assignment = re.compile(r"^\s*(STAT_\w+(\s*,\s*STAT_\w+)*)\s*=", re.M)
    owners = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                    if assignment.search(path.read_text()))
    assert owners == ["step_status.py"]


def test_per_replica_slots_report_the_first_bad_step():
    stat = new_md_status("cpu", 3)
    first, kind = replica_slots(stat, 3)
    assert first.tolist() == [-1, -1, -1] and kind.tolist() == [0, 0, 0]
    assert first_bad_step(stat.numpy(), 3) is None
    first[2], kind[2] = 9, TOO_FAST
    first[0], kind[0] = 7, NON_FINITE
    step, codes = first_bad_step(stat.numpy(), 3)
    assert step == 7 and codes.tolist() == [NON_FINITE, 0, 0]
    assert stat.dtype == torch.long and np.all(stat.numpy()[:step_status.STAT_SIZE] == new_md_status("cpu", 0).numpy())
