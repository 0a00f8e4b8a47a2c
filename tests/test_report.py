"""`make figures` reports what it produced, never more."""

from vgutils.__main__ import main
from vgutils.report import figures_report


def test_report_with_no_figures(tmp_path):
    text = figures_report(tmp_path / "missing", n_notebooks=0)
    assert "No figures were produced" in text
    assert "No figure notebooks exist yet" in text


def test_report_lists_real_files_only(tmp_path):
    (tmp_path / "fig01_layer_maps.pdf").write_bytes(b"%PDF" + b"0" * 2048)
    (tmp_path / "fig01_layer_maps.png").write_bytes(b"\x89PNG")
    (tmp_path / "notes.txt").write_text("not a figure")
    text = figures_report(tmp_path, n_notebooks=1)
    assert "2 figure file(s)" in text
    assert "fig01_layer_maps.pdf  (2 KiB)" in text
    assert "notes.txt" not in text


def test_cli_report(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--build-dir", str(tmp_path / "build")]) == 0
    assert "0 figure notebook(s)" in capsys.readouterr().out


def test_cli_report_counts_the_executed_notebooks(tmp_path, capsys):
    folder = tmp_path / "build" / "smoke" / "notebooks"
    folder.mkdir(parents=True)
    for name in ("01_a.ipynb", "02_b.ipynb", "03_c.ipynb.partial.ipynb"):
        (folder / name).write_text("{}")
    # no folder argument: the profile's figures folder
    assert main(["report", "--profile", "smoke", "--build-dir", str(tmp_path / "build")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 figure notebook(s) up to date.")
    assert "figures/smoke holds no PDF" in out or "figure file(s) in" in out


def test_cli_report_unknown_profile_is_one_line(capsys):
    assert main(["report", "--profile", "defualt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'default'?" in err


def test_cli_report_knows_a_rehearsal_profile_in_a_fresh_process(tmp_path):
    """`make figures PROFILE=paper REHEARSAL=1` ends with `report --profile paper-rehearsal`
    in a process that never imported the rehearsal plug-in."""
    import subprocess
    import sys

    build = tmp_path / "build"
    (build / "paper-rehearsal" / "notebooks").mkdir(parents=True)
    (build / "paper-rehearsal" / "notebooks" / "01_a.ipynb").write_text("{}")
    command = ["report", str(tmp_path / "figs"), "--profile", "paper-rehearsal"]
    done = subprocess.run(
        [sys.executable, "-m", "vgutils", *command, "--build-dir", str(build)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 figure notebook(s)")
