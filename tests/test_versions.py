"""Versions: a parameter change keeps both versions (history shows the difference); status names
artifacts whose imported modules, libraries or inputs changed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ecafm import store
from ecafm.cli import main
from ecafm.level import LevelParams
from ecafm.store import open_cube, read_record, verify
from ecafm.versions import history, status
from tests.test_audit import small_run


@pytest.fixture
def run(tmp_path):
    return small_run(tmp_path)


def test_parameter_change_keeps_both_versions(run, capsys):
    first = read_record(run / "level" / "cell" / "cycle_0.zarr")
    small_run(run.parent, level=LevelParams(order=2))
    second = read_record(run / "level" / "cell" / "cycle_0.zarr")
    assert first["version_id"] != second["version_id"]

    hist = history(run, dataset="cell")
    rows = hist["level/cell/cycle_0.zarr"]
    assert [r["version_id"] for r in rows] == [first["version_id"], second["version_id"]]
    assert [r["current"] for r in rows] == [False, True]
    assert "params: order 1 -> 2" in rows[1]["changes"]
    # the first version is intact and addressable
    old = store.archive_path(run / "level" / "cell" / "cycle_0.zarr", first["version_id"])
    assert old == run / ".versions" / first["version_id"] / "level" / "cell" / "cycle_0.zarr"
    assert verify(old) == []
    assert store.logical_hash(open_cube(old)) == first["artifact"]["logical_sha256"]
    # the cube's params did not change; its second write ran in a process that had meanwhile
    # imported the level kernels, which the record says (imported modules are what ran)
    assert all(c.startswith("code: module ecafm.kernels") and c.endswith(" added")
               for c in hist["cubes/cell.zarr"][-1]["changes"])

    assert main(["history", str(run), "--dataset", "cell"]) == 0
    out = capsys.readouterr().out
    assert "level/cell/cycle_0.zarr: 2 version(s)" in out and "order 1 -> 2" in out
    assert main(["history", str(run), "--dataset", "other"]) == 0
    assert "no artifact records" in capsys.readouterr().out


def test_history_shows_input_and_library_differences(run, monkeypatch):
    real = store.library_versions
    monkeypatch.setattr(store, "library_versions", lambda *a: {**real(*a), "numpy": "0.0.test"})
    small_run(run.parent, ingest_params={"frame_chunk": 2})
    changes = history(run)["level/cell/cycle_1.zarr"][1]["changes"]
    assert any(c.startswith("input ") and "cell.zarr" in c for c in changes), changes
    assert any(c.startswith("libraries: numpy") and "0.0.test" in c for c in changes), changes
    assert "params: frame_chunk 1 -> 2" in history(run)["cubes/cell.zarr"][1]["changes"]


def test_fresh_run_is_current(run, capsys):
    assert all(not r for r in status(run).values())
    assert main(["status", str(run), "--exit-code"]) == 0
    assert "current" in capsys.readouterr().out


def test_edited_module_names_the_artifacts_that_imported_it(run, tmp_path, monkeypatch, capsys):
    """A temp copy of the package with ecafm/level.py edited stands in for the installed one."""
    pkg = tmp_path / "pkg" / "ecafm"
    shutil.copytree(store._package_root(), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "level.py", "a") as fh:
        fh.write("\n# an edit\n")
    monkeypatch.setattr(store, "_package_root", lambda: pkg)
    st = status(run)
    for c in (0, 1):
        assert "module ecafm.level changed" in st[f"level/cell/cycle_{c}.zarr"]
    assert all(r == ["module ecafm.level changed"] for r in st.values()), st
    assert main(["status", str(run), "--exit-code"]) == 1
    out = capsys.readouterr().out
    assert "level/cell/cycle_0.zarr: OUT OF DATE" in out and "module ecafm.level changed" in out


def test_library_upgrade_and_changed_input_are_named(run, monkeypatch):
    real = store.library_versions
    monkeypatch.setattr(store, "library_versions", lambda *a: {**real(*a), "zarr": "9.9.9"})
    st = status(run)
    assert all(any(r.startswith("zarr ") and r.endswith("-> 9.9.9") for r in v) for v in st.values())
    monkeypatch.undo()
    frames = run.parent / "data" / "frames.tsv"
    frames.write_text(frames.read_text() + "\n")
    st = status(run)
    assert any("frames.tsv changed" in r for r in st["cubes/cell.zarr"])
    assert st["level/cell/cycle_0.zarr"] == []


def test_record_names_only_the_modules_the_writer_imported(tmp_path):
    code = ("import numpy as np, xarray as xr; from ecafm.store import Step, write_cube;"
            f"write_cube(xr.Dataset({{'a': ('x', np.arange(3.0))}}), r'{tmp_path / 'a.zarr'}', step=Step('t'))")
    subprocess.run([sys.executable, "-c", code], check=True)
    rec = json.loads((tmp_path / "a.zarr.prov.json").read_text())
    assert rec["schema"] == "ecafm.provenance/2"
    assert "ecafm.store" in rec["code"]["imported"] and "ecafm.register" not in rec["code"]["imported"]
    assert set(rec["code"]["imported"]) < set(rec["code"]["modules"])
