"""The package's layers (issue #27): the import-linter contracts of pyproject.toml hold, an
upward import breaks them, nothing below the CLI reads a ``VGUTILS_*`` variable but
:mod:`vgutils.context`, and nothing but the launcher plug-in (:mod:`vgutils.launch`) reads
a launcher's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``SLURM_*``; issue #26)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT), str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "vgutils", tmp_path / "vgutils", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_layers_hold():
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("KEPT") == 4


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("data/manifest.py", "from vgutils import figdata", "layers"),  # core -> figure side
        ("geometry.py", "import vgutils.models.sources", "layers"),  # base -> core
        ("plots.py", "from vgutils import rehearsal", "plug-in"),  # figure side -> rehearsal
        ("runner.py", "from vgutils import launch", "launchers"),  # pipeline -> the launcher
        ("jobs.py", "from vgutils import launch", "launchers"),  # profile loader -> launcher
        ("models/tiny_parts.py", "from vgutils.models import tiny", "cycles"),  # a cycle
    ],
)
def test_an_upward_import_or_a_cycle_breaks_the_contract(tmp_path, module, line, broken):
    root = copy_package(tmp_path)
    path = root / "vgutils" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    done = lint(root)
    assert done.returncode == 1, done.stdout
    assert any(broken in row and "BROKEN" in row for row in done.stdout.splitlines())


ALLOWED_READERS = {"context.py"}  # the one place that builds the context
LAUNCHER_READERS = {"launch.py"}  # the one place that reads a launcher's variables
ENV_CALLS = {"get", "getenv", "pop", "setdefault"}
LAUNCHER_VARIABLES = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
}


def _is_launcher_variable(key: str) -> bool:
    return key in LAUNCHER_VARIABLES or key.startswith(("SLURM_", "OMPI_", "PMI_"))


def _environment_keys(tree: ast.Module, wanted=lambda key: key.startswith("VGUTILS_")) -> list[str]:
    """The keys a module reads from ``os.environ`` (literals, or module constants holding
    one) that ``wanted`` picks (default: ``VGUTILS_*``)."""
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }

    def key(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return None

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            found.append(key(node.slice))
        elif isinstance(node, ast.Call) and node.args:
            called = ast.unparse(node.func)
            if called in ("os.getenv",) or (
                called.startswith("os.environ.") and called.rsplit(".", 1)[1] in ENV_CALLS
            ):
                found.append(key(node.args[0]))
    return [k for k in found if k and wanted(k)]


def test_nothing_below_the_cli_reads_a_vgutils_variable():
    readers = {}
    for path in (REPO / "vgutils").rglob("*.py"):
        relative = path.relative_to(REPO / "vgutils")
        if relative.parts[0] in ("cli", "__main__.py") or str(relative) in ALLOWED_READERS:
            continue
        keys = _environment_keys(ast.parse(path.read_text()))
        if keys:
            readers[str(relative)] = keys
    assert readers == {}


def test_nothing_but_the_launcher_reads_a_launcher_variable():
    readers = {}
    for path in (REPO / "vgutils").rglob("*.py"):
        relative = path.relative_to(REPO / "vgutils")
        if str(relative) in LAUNCHER_READERS:
            continue
        keys = _environment_keys(ast.parse(path.read_text()), _is_launcher_variable)
        if keys:
            readers[str(relative)] = keys
    assert readers == {}
    tree = ast.parse('import os\nos.environ.get("LOCAL_RANK")\nos.environ["SLURM_PROCID"]')
    assert _environment_keys(tree, _is_launcher_variable) == ["LOCAL_RANK", "SLURM_PROCID"]


def test_the_reader_test_finds_a_read():
    tree = ast.parse('import os\nX = "VGUTILS_DATA"\nos.environ.get(X)\nos.environ["VGUTILS_A"]')
    assert _environment_keys(tree) == ["VGUTILS_DATA", "VGUTILS_A"]
