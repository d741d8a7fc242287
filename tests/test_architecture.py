"""The packages' structure: imports flow one way (no cycle, lazy imports
included) and no module grows past what one reader takes in."""
import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pyscf_fusionrcg", "ase_flashschnet", "gpucore")
#: Lines of the longest module a package may hold.
MODULE_LINES_MAX = 600


def _modules(package: str) -> dict:
    """{dotted module name: path} of a package's Python files."""
    root = REPO / package
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, known: set) -> set:
    """The package's modules that ``name`` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycle(graph: dict):
    """One import cycle of ``graph`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _graph(package: str) -> dict:
    mods = _modules(package)
    graph = {m: _imports(m, p, set(mods)) for m, p in mods.items()}
    # a package imports its own submodules to hand their names on: that is no cycle
    return {m: {n for n in deps if not n.startswith(m + ".")} for m, deps in graph.items()}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    cycle = _cycle(_graph(package))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_too_long(package):
    long = {m: n for m, p in _modules(package).items()
            if (n := len(p.read_text().splitlines())) > MODULE_LINES_MAX}
    assert not long, f"modules over {MODULE_LINES_MAX} lines: {long}"


def test_the_engine_reads_the_environment_in_one_module():
    """Options come down as one object; only pyscf_fusionrcg/options.py reads
    the environment (to fill that object's defaults)."""
    readers = sorted(str(p.relative_to(REPO)) for p in (REPO / "pyscf_fusionrcg").rglob("*.py")
                     if "os.environ" in p.read_text() or "getenv(" in p.read_text())
    assert readers == ["pyscf_fusionrcg/options.py"]


def test_every_subpackage_is_installed(setup_cfg):
    """setup.cfg lists packages by name: a subpackage missing there is missing
    from the wheel, and only a non-editable install would show it."""
    listed = set(setup_cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(REPO).parts) for pkg in PACKAGES
             for p in (REPO / pkg).rglob("__init__.py")}
    assert found <= listed, f"not in setup.cfg's packages: {sorted(found - listed)}"
