"""The manifest of a run in stages: what each stage produced, with which
settings, in how much time, and whether it finished.

A run whose stages each fit a time slot of a shared machine is made of
several calls; ``pipeline.json`` in its folder is how one call knows what the
calls before it did. Each stage's record holds its ``status`` ('done',
'partial': stopped at its time limit, a rerun goes on; 'failed': stopped by an
error, named in ``note``), the ``settings`` it ran with, its ``outputs``
(files relative to the folder, and figures), its ``seconds`` and ``calls``
summed over the calls that worked on it, and when it was last ``updated``.
The file is rewritten whole (written aside, then renamed) after each stage's
call, so an interrupted call leaves the record of the one before.

The run's ``sizes`` ('full', 'quick') are fixed when the file is made: a
folder of one size refuses a call of the other, whose stages would not fit
the files there.
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

__all__ = ["MANIFEST_NAME", "DONE", "PARTIAL", "FAILED", "Manifest"]

MANIFEST_NAME = "pipeline.json"
DONE, PARTIAL, FAILED = "done", "partial", "failed"
_FORMAT = "flashschnet-pipeline-v1"


class Manifest:
    """``pipeline.json`` in ``out_dir``: read when it exists (checked against
    ``sizes`` unless that is None), else empty; nothing is written before the
    first :meth:`record`."""

    def __init__(self, out_dir, sizes: str | None):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        if not self.path.is_file():
            self.data = {"format": _FORMAT, "sizes": sizes, "stages": {}}
            return
        self.data = json.loads(self.path.read_text())
        if self.data.get("format") != _FORMAT:
            raise ValueError(f"{self.path} is not a stage manifest (format {self.data.get('format')!r})")
        if sizes is not None and self.data["sizes"] != sizes:
            raise ValueError(f"{self.out_dir} holds a run of {self.data['sizes']} sizes, this call asks for "
                             f"{sizes} sizes: repeat the options the run started with, or use another folder")

    def stage(self, name: str) -> dict:
        """The stage's record; empty while it has none."""
        return self.data["stages"].get(name, {})

    def status(self, name: str) -> str | None:
        """'done', 'partial', 'failed', or None for a stage not run yet."""
        return self.stage(name).get("status")

    def record(self, name: str, status: str, seconds: float, settings: dict, outputs: dict, note: str = "") -> dict:
        """Record a call of stage ``name`` (its time added to the earlier calls'), write the file, return the record."""
        if status not in (DONE, PARTIAL, FAILED):
            raise ValueError(f"status must be {DONE!r}, {PARTIAL!r} or {FAILED!r}, got {status!r}")
        before = self.stage(name)
        record = {"status": status, "settings": settings, "outputs": outputs,
                  "seconds": round(before.get("seconds", 0.0) + seconds, 1), "calls": before.get("calls", 0) + 1,
                  "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "note": note}
        self.data["stages"][name] = record
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)
        return record
