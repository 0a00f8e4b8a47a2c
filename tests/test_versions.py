"""A resumed run warns, in one line, when the package versions changed since it started
(#29 item 7); run.json keeps the versions each part was computed under."""

import logging

from vgutils.results import RunStore, read_run_file, version_changes

OLD = {"python": "3.11.7", "torch": "2.14.1", "numpy": "2.4.6", "pandas": "3.1.1"}


def test_version_changes_names_each_package_old_and_new():
    new = {**OLD, "torch": "2.15.0", "pandas": None}
    assert version_changes(OLD, new) == "pandas 3.1.1 -> none, torch 2.14.1 -> 2.15.0"
    assert version_changes(OLD, dict(OLD)) == ""


def test_resume_under_other_versions_warns_once_in_one_line(tmp_path, caplog):
    folder = tmp_path / "run"
    with RunStore(folder) as store:
        store.open({"a": 1}, {"model": "m"}, OLD)
    with caplog.at_level(logging.WARNING, logger="vgutils.results"), RunStore(folder) as store:
        run = store.open({"a": 1}, {"model": "m"}, dict(OLD))
        assert not caplog.records  # same versions: silent
        store.write_run(run)
    new = {**OLD, "numpy": "2.5.0"}
    with caplog.at_level(logging.WARNING, logger="vgutils.results"), RunStore(folder) as store:
        run = store.open({"a": 1}, {"model": "m"}, new)
        store.write_run(run)
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "numpy 2.4.6 -> 2.5.0" in message and str(folder) in message
    assert "torch" not in message
    saved = read_run_file(folder)
    assert saved["versions"] == new and saved["earlier_versions"] == [OLD]
