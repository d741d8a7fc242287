"""docs/README.md links every design note, and every link there resolves."""
import pathlib
import re

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_every_note_is_in_the_index():
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", (DOCS / "README.md").read_text()))
    notes = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert linked == notes, f"missing from docs/README.md: {sorted(notes - linked)}; dangling: {sorted(linked - notes)}"
