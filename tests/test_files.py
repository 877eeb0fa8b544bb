"""The package's one atomic writer (taid_vlm/files.py): old or new file, never half of one."""

from __future__ import annotations

import os
import stat

import pytest

from taid_vlm.files import atomic_path, write_text_atomically


def test_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "results.json"
    write_text_atomically(target, "one\n")
    write_text_atomically(target, "two\n")
    assert target.read_text() == "two\n" and os.listdir(target.parent) == ["results.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # shared outputs, not mkstemp's owner-only mode


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-summary.json")
            tmp.write_text("half of the ne")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]


def test_the_writer_syncs_before_it_renames(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_text_atomically(tmp_path / "a.txt", "x")
    assert events == ["fsync", "replace"]


def test_no_other_module_renames_a_file_into_place():
    """Every atomic file write goes through files.py (directory renames of checkpoints and runs excepted)."""
    import taid_vlm

    root = os.path.dirname(taid_vlm.__file__)
    allowed = {"files.py", os.path.join("train", "output.py"), os.path.join("train", "checkpoint.py")}
    offenders = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if name.endswith(".py") and rel not in allowed:
                text = open(path, encoding="utf-8").read()
                if "os.replace(" in text or "tempfile.mkstemp" in text:
                    offenders.append(rel)
    assert offenders == []
