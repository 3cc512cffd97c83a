"""Provenance write helper: logical hash invariant to chunking/threads, physical hash catches edits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from ecafm.store import (
    Step,
    canonical_json,
    logical_hash,
    open_cube,
    read_record,
    record_path,
    verify,
    write_cube,
    write_table,
)


def _cube(n=6, ny=16, nx=12, seed=0):
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {"height": (("frame", "y", "x"), rng.normal(size=(n, ny, nx)).astype(np.float32), {"units": "nm"})},
        coords={"frame": np.arange(n), "time": ("frame", np.arange(n) * 10.0, {"units": "s"}),
                "y": np.arange(ny) * 2.0, "x": np.arange(nx) * 2.0},
        attrs={"b": 1, "a": "x"},
    )


STEP = Step(rule="test", params={"k": 1})


@pytest.mark.parametrize("chunk", [1, 2, 5], ids=["chunk1", "chunk2", "chunk5"])
def test_logical_hash_independent_of_chunking(tmp_path, chunk):
    ds = _cube()
    ref = write_cube(ds, tmp_path / "ref.zarr", step=STEP, frame_chunk=1)
    rec = write_cube(ds, tmp_path / f"c{chunk}.zarr", step=STEP, frame_chunk=chunk)
    assert rec["artifact"]["logical_sha256"] == ref["artifact"]["logical_sha256"]
    if chunk != 1:
        assert rec["artifact"]["physical_sha256"] != ref["artifact"]["physical_sha256"]
    back = open_cube(tmp_path / f"c{chunk}.zarr")
    assert back["height"].encoding["chunks"][0] == chunk
    xr.testing.assert_identical(back.load(), ds.assign_attrs(dict(sorted(ds.attrs.items()))))


def test_logical_hash_independent_of_threads(tmp_path):
    import dask

    ds = _cube(n=9)
    with dask.config.set(scheduler="threads", num_workers=1):
        a = write_cube(ds, tmp_path / "a.zarr", step=STEP)
    with dask.config.set(scheduler="threads", num_workers=2):
        b = write_cube(ds, tmp_path / "b.zarr", step=STEP)
    assert a["artifact"]["logical_sha256"] == b["artifact"]["logical_sha256"]
    assert a["artifact"]["physical_sha256"] == b["artifact"]["physical_sha256"]


def test_logical_hash_sees_values_attrs_and_dtype():
    ds = _cube()
    h = logical_hash(ds)
    changed = ds.copy(deep=True)
    changed["height"][0, 0, 0] += 1e-3
    assert logical_hash(changed) != h
    assert logical_hash(ds.assign_attrs(c=2)) != h
    assert logical_hash(ds.astype({"height": np.float64})) != h


def test_physical_hash_catches_an_edited_chunk(tmp_path):
    path = tmp_path / "c.zarr"
    rec = write_cube(_cube(), path, step=STEP)
    assert verify(path) == []
    chunk = sorted((path / "height" / "c").rglob("*"))[-1]
    assert chunk.is_file() and chunk.relative_to(path).as_posix() in rec["artifact"]["files"]
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = verify(path)
    assert len(problems) == 1 and chunk.relative_to(path).as_posix() in problems[0]


def _count_file_hashes(monkeypatch):
    from ecafm import store

    calls = []
    real = store.sha256_file
    monkeypatch.setattr(store, "sha256_file", lambda p: calls.append(p) or real(p))
    return calls


def test_input_hash_reused_while_the_store_is_untouched(tmp_path, monkeypatch):
    """A job's input store is not re-read when every file has the size, times and inode recorded
    at its write; the entry is the same as a full re-hash."""
    from ecafm.store import describe_input, physical_hash

    path = tmp_path / "c.zarr"
    write_cube(_cube(), path, step=STEP)
    calls = _count_file_hashes(monkeypatch)
    entry = describe_input(path)
    assert calls == []
    monkeypatch.undo()
    assert entry["sha256"] == physical_hash(path) == read_record(path)["artifact"]["physical_sha256"]


def test_input_edited_in_place_is_rehashed(tmp_path, monkeypatch):
    """Same size and the old mtime put back: the ctime still moved, so the store is re-hashed and
    its entry shows the edit."""
    import os

    from ecafm.store import describe_input, physical_hash

    path = tmp_path / "c.zarr"
    rec = write_cube(_cube(), path, step=STEP)
    chunk = sorted((path / "height" / "c").rglob("*"))[-1]
    st = chunk.stat()
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert chunk.stat().st_size == st.st_size and chunk.stat().st_mtime_ns == st.st_mtime_ns
    calls = _count_file_hashes(monkeypatch)
    entry = describe_input(path)
    assert len(calls) == len(rec["artifact"]["files"])
    assert entry["sha256"] != rec["artifact"]["physical_sha256"]
    monkeypatch.undo()
    assert entry["sha256"] == physical_hash(path)


def test_input_store_walked_once_per_snakemake_job_and_at_every_record_outside_one(tmp_path, monkeypatch):
    """Outside a job (the in-process pipeline) each record checks the store's files again, so an
    edit between two records shows; inside a Snakemake job (:func:`job_inputs_fixed`, set by
    ``setup_job``) each input store is walked once, with the same entry."""
    from ecafm import store
    from ecafm.store import describe_input

    path = tmp_path / "c.zarr"
    rec = write_cube(_cube(), path, step=STEP)
    walks = []
    real = store.file_stats
    monkeypatch.setattr(store, "file_stats", lambda p: walks.append(p) or real(p))
    monkeypatch.setattr(store, "_JOB_DIR_SHA256", None)
    first = describe_input(path)
    assert describe_input(path) == first and len(walks) == 2  # a walk per record
    store.job_inputs_fixed()
    entries = [describe_input(path) for _ in range(5)]
    assert len(walks) == 3  # one more walk for the rest of the job
    assert all(e == first for e in entries)
    assert first["sha256"] == rec["artifact"]["physical_sha256"]
    # the store written again at the same path, by the same step (so the same version id) with
    # other values, is described anew
    rec2 = write_cube(_cube().assign(height=_cube()["height"] + 1.0), path, step=STEP)
    n = len(walks)
    again = describe_input(path)
    assert len(walks) == n + 1
    assert again["sha256"] == rec2["artifact"]["physical_sha256"] != first["sha256"]


def test_input_file_hashed_once_per_job_until_edited(tmp_path, monkeypatch):
    """A job recording the same raw file in two outputs hashes it once; an edit in place (same
    size, old mtime put back) changes the ctime and is hashed again."""
    import os
    import time

    from ecafm.store import describe_input, sha256_file

    raw = tmp_path / "frame.gwy"
    raw.write_bytes(b"GWYP" + bytes(range(256)) * 40)
    calls = _count_file_hashes(monkeypatch)
    first, again = describe_input(raw), describe_input(raw)
    assert len(calls) == 1 and first == again
    st = raw.stat()
    time.sleep(0.01)
    data = bytearray(raw.read_bytes())
    data[-1] ^= 0xFF
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = describe_input(raw)
    assert len(calls) == 2 and edited["sha256"] != first["sha256"]
    monkeypatch.undo()
    assert edited["sha256"] == sha256_file(raw)


def test_copied_input_is_rehashed(tmp_path, monkeypatch):
    """A copy (times preserved, new inodes) is hashed again, with the same result."""
    import shutil

    from ecafm.store import describe_input

    path = tmp_path / "c.zarr"
    rec = write_cube(_cube(), path, step=STEP)
    dest = tmp_path / "copy" / "c.zarr"
    shutil.copytree(path, dest)
    shutil.copy2(record_path(path), record_path(dest))
    calls = _count_file_hashes(monkeypatch)
    assert describe_input(dest)["sha256"] == rec["artifact"]["physical_sha256"]
    assert len(calls) == len(rec["artifact"]["files"])


def test_record_contents(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("raw")
    rec = write_cube(_cube(), tmp_path / "c.zarr",
                     step=Step(rule="r", params={"b": 2, "a": [1, 2]}, wildcards={"dataset": "d"},
                               inputs=(str(src),)))
    on_disk = json.loads(record_path(tmp_path / "c.zarr").read_text())
    assert on_disk == rec == read_record(tmp_path / "c.zarr")
    assert rec["step"] == {"rule": "r", "wildcards": {"dataset": "d"}, "params": {"a": [1, 2], "b": 2}}
    import hashlib

    assert rec["inputs"][0]["sha256"] == hashlib.sha256(b"raw").hexdigest()
    for lib in ("numpy", "scipy", "xarray", "zarr", "numcodecs", "dask", "snakemake"):
        assert rec["libraries"][lib]
    assert len(rec["code"]["source_sha256"]) == 64 and "ecafm.store" in rec["code"]["modules"]
    assert {"host", "start", "end", "slurm_job_id"} <= set(rec["run"])


def test_version_id_changes_with_params_not_with_host(tmp_path):
    a = write_cube(_cube(), tmp_path / "a.zarr", step=Step(rule="r", params={"k": 1}))
    b = write_cube(_cube(), tmp_path / "b.zarr", step=Step(rule="r", params={"k": 2}))
    c = write_cube(_cube(), tmp_path / "c.zarr", step=Step(rule="r", params={"k": 1}))
    assert a["version_id"] != b["version_id"]
    assert a["version_id"] == c["version_id"]


def test_failed_write_leaves_nothing(tmp_path):
    bad = _cube().assign(obj=("frame", np.array([object()] * 6)))
    with pytest.raises(Exception):  # noqa: B017 - any failure of the backend
        write_cube(bad, tmp_path / "x.zarr", step=STEP)
    assert list(tmp_path.iterdir()) == []


def test_table_round_trip(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    rec = write_table(df, tmp_path / "t.tsv", step=STEP)
    assert verify(tmp_path / "t.tsv") == []
    assert rec["artifact"]["kind"] == "table"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.tsv", sep="\t"), df)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.floats(allow_nan=False),
                                                     st.text(max_size=5)), max_size=6))
def test_canonical_json_is_order_independent(d):
    assert canonical_json(d) == canonical_json(dict(reversed(list(d.items()))))


def test_stale_partial_of_a_killed_run_is_removed(tmp_path):
    stale = tmp_path / ".c.zarr.partial-99999999"
    (stale / "height").mkdir(parents=True)
    (stale / "zarr.json").write_text("{}")
    write_cube(_cube(), tmp_path / "c.zarr", step=STEP)
    assert not stale.exists()
    assert {p.name for p in tmp_path.iterdir()} - {".versions"} == {"c.zarr", "c.zarr.prov.json"}


def test_images_chunked_per_frame_profiles_in_one_chunk(tmp_path):
    import zarr

    ds = _cube(n=6)
    ds["shift_y"] = (("frame", "y"), np.random.default_rng(1).normal(size=(6, 16)))
    ds["ok"] = ("frame", np.ones(6, bool))
    write_cube(ds, tmp_path / "c.zarr", step=STEP, frame_chunk=1)
    g = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert g["height"].chunks == (1, 16, 12)
    assert g["shift_y"].chunks == (6, 16)
    assert g["ok"].chunks == (6,)
    back = open_cube(tmp_path / "c.zarr").load()
    np.testing.assert_array_equal(back["shift_y"].values, ds["shift_y"].values)


def test_disk_mb_walks_a_written_store_once_and_a_rewritten_one_again(tmp_path, monkeypatch):
    import os

    from ecafm import store

    out = tmp_path / "c.zarr"
    write_cube(_cube(n=4), out, step=Step("t"))
    on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    walks = []
    real = os.scandir
    monkeypatch.setattr(store.os, "scandir", lambda p: walks.append(p) or real(p))
    assert store.disk_mb(out) == pytest.approx(on_disk, rel=1e-12)
    n = len(walks)
    assert n > 1  # the store's subdirectories are walked
    for _ in range(4):
        assert store.disk_mb(out) == pytest.approx(on_disk, rel=1e-12)
    assert len(walks) == n
    # written again (a new directory renamed into place) with more frames: measured again
    write_cube(_cube(n=12, seed=1), out, step=Step("t"))
    bigger = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    assert bigger > on_disk
    assert store.disk_mb(out) == pytest.approx(bigger, rel=1e-12)
    table = tmp_path / "t.tsv"
    table.write_text("a\tb\n1\t2\n")
    assert store.disk_mb(table) == pytest.approx(table.stat().st_size / 1e6)
    assert store.disk_mb(tmp_path / "missing.zarr") == 0.0


def test_parquet_table_round_trip_and_a_clear_error_without_pyarrow(tmp_path, monkeypatch):
    import sys

    import pandas as pd

    df = pd.DataFrame({"site": [1, 2, 3], "volume_nm3": [1.5, 2.5, 0.0]})
    out = tmp_path / "sites.parquet"
    write_table(df, out, step=Step("t"))
    pd.testing.assert_frame_equal(pd.read_parquet(out), df)
    assert read_record(out)["artifact"]["kind"] == "table"

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as in an install without ecafm[parquet]
    missing = tmp_path / "other.parquet"
    with pytest.raises(ImportError, match=r"other\.parquet: .*pip install 'ecafm\[parquet\]'"):
        write_table(df, missing, step=Step("t"))
    assert not any("other" in p.name for p in tmp_path.rglob("*"))  # nothing partial, no record


def test_library_versions_read_once_per_process(monkeypatch):
    """Every record names the key libraries' versions; the package metadata is read once."""
    from importlib import metadata

    from ecafm import store

    store._library_versions.cache_clear()
    calls = []
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda n: calls.append(n) or real(n))
    first = store.library_versions()
    n = len(calls)
    assert n == len(store.KEY_LIBRARIES) and first["numpy"] == real("numpy")
    first["numpy"] = "edited by a caller"
    again = store.library_versions()
    assert len(calls) == n and again["numpy"] == real("numpy")  # cached, and callers get a copy
    store._library_versions.cache_clear()
