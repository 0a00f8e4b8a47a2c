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
    assert main(["report", str(tmp_path), "--notebooks", "0"]) == 0
    assert "No figures were produced" in capsys.readouterr().out
