"""Figure provenance (#29 item 4): every saved PNG / PDF records what it was made from,
`report` reads it back from the files, and a notebook's job status is one line."""

import json
import re
import shutil
import subprocess

import matplotlib.pyplot as plt
import pytest

from vgutils import context, provenance
from vgutils.provenance import Provenance

KNOWN = Provenance(
    commit="0123456789abcdef0123456789abcdef01234567-dirty",
    profile="smoke",
    protocol="corrected",
    models=(("tiny:llava", "folder-sha256:" + "ab" * 32), ("org/m (x)", "hub:" + "cd" * 20)),
    data=(("sample-medical", "sha256:" + "ef" * 32),),
)


@pytest.fixture
def figures(tmp_path):
    with context.use(context.current().replace(figures_root=tmp_path)):
        yield tmp_path


def _save(profile="smoke", name="fig_x", given=KNOWN):
    from vgutils import plots

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    try:
        return plots.save_figure(fig, profile, name, provenance=given)
    finally:
        plt.close(fig)


def test_save_figure_records_provenance_in_png_and_pdf(figures):
    pdf, png = _save()
    assert provenance.read_figure(png) == KNOWN
    assert provenance.read_figure(pdf) == KNOWN
    from PIL import Image

    with Image.open(png) as image:  # a plain PIL reader sees the text chunks
        assert json.loads(image.text[provenance.PNG_KEY])["commit"].endswith("-dirty")
        assert "profile smoke" in image.text["Description"]
    info = provenance.pdf_info(pdf.read_bytes())
    assert "protocol corrected" in info["Subject"] and info["Creator"].startswith("Matplotlib")


def test_pdf_info_reads_escapes_and_the_last_update():
    data = (
        b"%PDF-1.4\n1 0 obj\n<< /Title (old) >>\nendobj\ntrailer\n<< /Info 1 0 R >>\n"
        b"1 0 obj\n<< /Title (a \\(b\\) c\\\\d\\101) /Trapped /False /N 3 "
        b"/Subject <FEFF00E9> /Keywords (x\\\ny) >>\nendobj\ntrailer\n<< /Size 2 /Info 1 0 R >>"
    )
    info = provenance.pdf_info(data)
    assert info == {
        "Title": "a (b) c\\dA",
        "Trapped": "False",
        "Subject": "é",
        "Keywords": "xy",
    }
    assert provenance.pdf_info(b"%PDF-1.4 no trailer") == {}


def test_report_prints_the_provenance_read_back_from_the_files(figures, capsys):
    from vgutils.__main__ import main

    _save(name="fig01")
    other = Provenance("feedbeef" * 5, "smoke", "authors")
    _save(name="fig02", given=other)
    (figures / "smoke" / "old.png").write_bytes(b"\x89PNG not really")
    assert main(["report", str(figures / "smoke"), "--build-dir", str(figures / "b")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if "fig0" in line}
    assert rows["fig01.pdf"] == ["0123456789ab-dirty", "smoke", "corrected", "#1"]
    assert rows["fig01.png"] == rows["fig01.pdf"]
    assert rows["fig02.png"] == ["feedbeeffeed", "smoke", "authors", "#2"]
    assert re.search(r"\n  old\.png +unreadable \(UnidentifiedImageError\)\n", out)
    assert "model tiny:llava  folder-sha256:abababababab" in out
    assert "model org/m (x)  hub:cdcdcdcdcdcd" in out
    assert "data  sample-medical  sha256:efefefefefef" in out


def test_default_provenance_comes_from_the_profiles_runs(figures, tmp_path):
    results = tmp_path / "results"
    run = {
        "options": {"model": "tiny:llava", "dataset": "sample-medical", "protocol": "authors"},
        "identity": {
            "model": "tiny:llava",
            "model_folder_sha256": "11" * 32,
            "dataset": "sample-medical",
            "dataset_sha256": "22" * 32,
        },
        "status": "complete",
    }
    mc = {
        "options": {"model": "org/m", "benchmark": "medical-mc"},
        "identity": {"model_revision": "33" * 20, "benchmark_sha256": "44" * 32},
        "status": "complete",
    }
    for name, record in (("a", run), ("mc__b", mc)):
        (results / "smoke" / name).mkdir(parents=True)
        (results / "smoke" / name / "run.json").write_text(json.dumps(record))
    (results / "smoke" / "no_run").mkdir()
    with context.use(context.current().replace(results_root=results)):
        pdf, png = _save(given=None)
    recorded = provenance.read_figure(png)
    assert recorded == provenance.read_figure(pdf)
    assert recorded.profile == "smoke" and recorded.protocol == "corrected"  # smoke.yaml's
    assert recorded.commit == provenance.source_commit()
    assert recorded.models == (
        ("org/m", "hub:" + "33" * 20),
        ("tiny:llava", "folder-sha256:" + "11" * 32),
    )
    assert recorded.data == (
        ("medical-mc", "sha256:" + "44" * 32),
        ("sample-medical", "sha256:" + "22" * 32),
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_says_dirty_and_unknown(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    assert provenance.git_commit(repo) == "unknown"  # not a checkout

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert provenance.git_commit(repo) == head
    (repo / "a.py").write_text("x = 2\n")
    assert provenance.git_commit(repo) == f"{head}-dirty"
    git("checkout", "-q", "a.py")
    (repo / "new.py").write_text("")
    assert provenance.git_commit(repo) == f"{head}-dirty"  # untracked, not ignored
    (repo / ".gitignore").write_text("new.py\n.gitignore\n")
    assert provenance.git_commit(repo) == head
    sub = repo / "pkg"
    sub.mkdir()
    assert provenance.git_commit(sub) == "unknown"  # inside another repository


def test_status_line_is_one_line():
    from vgutils.jobs import status_line

    tally = {"complete": 12, "computed": 3, "cached": 9, "waiting": 0, "replaced": 0}
    line = status_line("default", tally, 41.2)
    assert line == "profile default: 12 runs complete (3 computed now, 9 cached) in 41 s"
    tally.update(replaced=1, waiting=2)
    assert "\n" not in status_line("default", tally, 1)
    assert status_line("default", tally, 1).endswith(
        "; 1 stale run(s) recomputed; 2 waiting for other ranks"
    )


def test_ensure_results_prints_one_line_in_a_notebook_and_details_on_request(monkeypatch, capsys):
    import vgutils.runner as runner
    from vgutils.jobs import ensure_results

    calls = []

    def fake_extract(options, out, **run):
        calls.append(out)
        computed = 2 if len(calls) % 3 == 0 else 0
        return runner.RunSummary(out, 4, 0, 0.0, computed)

    monkeypatch.setattr(runner, "extract", fake_extract)
    jobs = ensure_results("smoke", progress=False)
    out = capsys.readouterr().out
    fresh = len(jobs) // 3
    assert out.splitlines() == [
        f"profile smoke: {len(jobs)} runs complete ({fresh} computed now, "
        f"{len(jobs) - fresh} cached) in 0 s"
    ]
    ensure_results("smoke", progress=False, details=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(jobs) + 1 and lines[0].startswith(f"[1/{len(jobs)}] ")
    assert lines[-1].startswith("profile smoke: ")
