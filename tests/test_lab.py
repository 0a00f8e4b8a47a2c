"""``make lab``: the Jupyter Server configuration in lab/jupyter_server_config.py. Its
save hook strips notebooks under notebooks/ (never build/); a JupyterLab started with it
on a git copy saves a run notebook through the contents API and ``git status`` stays
clean."""

import copy
import json
import runpy
import shutil
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from lab_server import git, running_lab

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "lab" / "jupyter_server_config.py"
NOTEBOOK = "05_clinician_ratings.ipynb"


def run_notebook(notebook: dict) -> dict:
    """``notebook`` as JupyterLab saves it after running every cell with Shift+Enter
    (outputs, counts, widget state, the running kernel's spec and language details,
    collapsed cells, output-area metadata, an empty cell at the end)."""
    ran = copy.deepcopy(notebook)
    count = 0
    for cell in ran["cells"]:
        cell["metadata"]["collapsed"] = False
        if cell["cell_type"] == "code":
            count += 1
            cell["execution_count"] = count
            cell["metadata"]["execution"] = {"iopub.status.idle": "2026-12-05T00:00:00Z"}
            cell["metadata"]["jupyter"] = {"outputs_hidden": False, "source_hidden": True}
            cell["outputs"] = [
                {"output_type": "stream", "name": "stdout", "text": ["hello\n"]},
                {
                    "output_type": "display_data",
                    "data": {"image/png": "iVBORw0KGgo=", "text/plain": ["<Figure>"]},
                    "metadata": {},
                },
            ]
    ran["cells"].append(  # Shift+Enter on the last cell adds an empty one
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "new",
            "metadata": {},
            "outputs": [],
            "source": "",
        }
    )
    ran["metadata"]["language_info"] = {
        "name": "python",
        "version": "3.11.2",
        "mimetype": "text/x-python",
        "codemirror_mode": {"name": "ipython", "version": 3},
    }
    ran["metadata"]["kernelspec"] = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
    ran["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return ran


@pytest.fixture
def hook():
    return runpy.run_path(str(CONFIG))


def test_strip_on_save_strips_notebooks_and_keeps_build(hook):
    committed = json.loads((REPO / "notebooks" / NOTEBOOK).read_text())
    manager = SimpleNamespace(root_dir=str(REPO))
    saved = {"type": "notebook", "content": run_notebook(committed)}
    hook["strip_on_save"](saved, f"/notebooks/{NOTEBOOK}", manager)
    assert saved["content"] == committed  # what git has: nothing to commit
    parameters = next(c for c in saved["content"]["cells"] if c["cell_type"] == "code")
    assert parameters["metadata"]["tags"] == ["parameters"]  # papermill's tag kept

    executed = {"type": "notebook", "content": run_notebook(committed)}
    before = copy.deepcopy(executed)
    hook["strip_on_save"](executed, f"build/default/notebooks/{NOTEBOOK}", manager)
    assert executed == before  # an executed copy keeps its outputs
    text = {"type": "file", "format": "text", "content": "x"}
    hook["strip_on_save"](text, "notebooks/params/default.yaml", manager)
    assert text["content"] == "x"


def test_strip_on_save_follows_the_root(hook, tmp_path):
    """The root is wherever Jupyter was started; only the repository's notebooks/ counts."""
    committed = json.loads((REPO / "notebooks" / NOTEBOOK).read_text())
    inside = {"type": "notebook", "content": run_notebook(committed)}
    hook["strip_on_save"](inside, NOTEBOOK, SimpleNamespace(root_dir=str(REPO / "notebooks")))
    assert inside["content"] == committed
    elsewhere = {"type": "notebook", "content": run_notebook(committed)}
    hook["strip_on_save"](elsewhere, f"notebooks/{NOTEBOOK}", SimpleNamespace(root_dir=tmp_path))
    assert elsewhere["content"]["cells"][1]["outputs"]


def test_makefile_lab_uses_the_config():
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "--config=lab/jupyter_server_config.py" in recipe


def _request(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else {}


def test_lab_save_leaves_git_status_clean(tmp_path):
    """JupyterLab with the config of ``make lab`` on a git copy (notebooks/, lab/,
    .gitignore): saving a run notebook under notebooks/ (and its checkpoint) writes no
    output and no other file git sees; an executed copy under build/ keeps its outputs."""
    pytest.importorskip("jupyterlab")
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    shutil.copytree(REPO / "lab", root / "lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy")
    with running_lab(root, tmp_path) as (server, token):
        base, auth = f"{server}/api/contents", f"?token={token}"
        listing = _request(f"{base}/{auth}")
        assert {"notebooks", "lab"} <= {item["name"] for item in listing["content"]}
        lab_page = urllib.request.urlopen(f"{server}/lab{auth}", timeout=30)
        assert '"preferredPath": "notebooks"' in lab_page.read().decode()  # opened first

        url = f"{base}/notebooks/{NOTEBOOK}{auth}"
        committed = _request(url)["content"]
        _request(f"{base}/notebooks/{NOTEBOOK}/checkpoints{auth}", "POST")
        ran = run_notebook(committed)
        _request(url, "PUT", {"type": "notebook", "format": "json", "content": ran})
        on_disk = json.loads((root / "notebooks" / NOTEBOOK).read_text())
        assert all(not c.get("outputs") for c in on_disk["cells"])
        _request(f"{base}/notebooks/{NOTEBOOK}/checkpoints{auth}", "POST")
        assert git(root, "status", "--porcelain", "--untracked-files=all") == ""

        # the executed copies under build/ are reachable and keep their outputs
        _request(f"{base}/build{auth}", "PUT", {"type": "directory"})
        _request(f"{base}/build/default{auth}", "PUT", {"type": "directory"})
        _request(f"{base}/build/default/notebooks{auth}", "PUT", {"type": "directory"})
        executed = f"{base}/build/default/notebooks/{NOTEBOOK}{auth}"
        _request(executed, "PUT", {"type": "notebook", "format": "json", "content": ran})
        kept = json.loads((root / "build" / "default" / "notebooks" / NOTEBOOK).read_text())
        assert [c.get("outputs") for c in kept["cells"]] == [c.get("outputs") for c in ran["cells"]]
        assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
