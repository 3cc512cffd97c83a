"""Audit: hash check names each tampered, missing or edited file; re-execution reproduces an
untouched run and catches an artifact whose record is consistent but whose data are not."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from ecafm.audit import MISMATCH, OK, SKIPPED, audit, check_hashes, reexecute, split_ingest_inputs
from ecafm.cli import main
from ecafm.level import LevelParams, cycle_segments, level_cycle
from ecafm.store import Step, open_cube, read_record, write_cube
from tests.helpers import blas_threads, make_dataset


def small_run(root: Path, *, level: LevelParams = LevelParams(), ingest_params: dict | None = None) -> Path:
    """Ingest + level of a tiny dataset through the library, recorded like the workflow's jobs."""
    from ecafm.ingest import ingest

    if not (root / "data").exists():
        make_dataset(root / "data", n_frames=6, n_cycles=2, half_s=100.0, shape=(24, 24))
    d = root / "data"
    results = root / "results"
    cube = results / "cubes" / "cell.zarr"
    ingest([d / "raw"], cube, fmt="gwy", ec_log=d / "ec" / "log.mpt", frame_sheet=d / "frames.tsv",
           qc_table=results / "cubes" / "cell.qc.tsv", dataset_id="cell", rule="ingest_dataset",
           wildcards={"dataset": "cell"}, **(ingest_params or {}))
    for c in cycle_segments(open_cube(cube)):
        wc = {"dataset": "cell", "cycle": str(c)}
        level_cycle(cube, c, results / "level" / "cell" / f"cycle_{c}.zarr", params=level,
                    step=Step("level_cycle", asdict(level), wc, (str(cube),), job_rule="register_cycle"))
    return results


@pytest.fixture
def run(tmp_path) -> Path:
    return small_run(tmp_path)


def _by(findings, check):
    return {f.artifact: f for f in findings if f.check == check}


def test_untouched_run_passes_hashes_and_reexecution(run):
    findings = audit(run)
    assert not [f for f in findings if f.failed], findings
    re = _by(findings, "reexec")
    assert set(re) == {"cubes/cell.zarr", "cubes/cell.qc.tsv", "level/cell/cycle_0.zarr",
                       "level/cell/cycle_1.zarr"}
    assert all(f.status == OK and "logical and physical hashes match" in f.detail for f in re.values())
    assert main(["audit", str(run)]) == 0


def test_tampered_chunk_is_named(run):
    store = run / "level" / "cell" / "cycle_1.zarr"
    chunk = next(p for p in sorted((store / "height" / "c").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    bad = [f for f in check_hashes(run) if f.failed]
    assert [f.artifact for f in bad] == ["level/cell/cycle_1.zarr"]
    assert chunk.relative_to(store).as_posix() in bad[0].detail and "modified" in bad[0].detail
    assert main(["audit", str(run), "--hashes-only"]) == 1


def test_edited_attributes_and_missing_file_are_named(run):
    cube = run / "cubes" / "cell.zarr"
    meta = json.loads((cube / "zarr.json").read_text())
    meta["attributes"]["metal"] = "Na"
    (cube / "zarr.json").write_text(json.dumps(meta))
    (run / "cubes" / "cell.qc.tsv").unlink()
    bad = {f.artifact: f.detail for f in check_hashes(run) if f.failed}
    assert set(bad) == {"cubes/cell.zarr", "cubes/cell.qc.tsv"}
    assert "zarr.json: sha256 differs" in bad["cubes/cell.zarr"]
    assert "cell.qc.tsv: missing" in bad["cubes/cell.qc.tsv"]


def test_reexecution_catches_data_that_the_recorded_step_does_not_make(run, tmp_path):
    """A consistent record over forged data passes the hash check but not re-execution."""
    path = run / "level" / "cell" / "cycle_0.zarr"
    rec = read_record(path)
    forged = open_cube(path).load()
    forged["height"] = forged["height"] + 1.0
    step = Step(rec["step"]["rule"], rec["step"]["params"], rec["step"]["wildcards"],
                tuple(i["path"] for i in rec["inputs"]))
    write_cube(forged, path, step=step)
    assert not [f for f in check_hashes(run) if f.failed]
    re = _by(reexecute(run, tmp_path / "scratch"), "reexec")
    assert re["level/cell/cycle_0.zarr"].status == MISMATCH
    assert "logical hash differs" in re["level/cell/cycle_0.zarr"].detail
    assert re["level/cell/cycle_1.zarr"].status == OK
    assert main(["audit", str(run), "--report", str(tmp_path / "r.tsv")]) == 1
    assert "MISMATCH" in (tmp_path / "r.tsv").read_text()


def test_reexecution_uses_the_filed_version_of_a_replaced_input(run, tmp_path):
    """Re-ingesting with another param replaces the live cube; the leveled cycles' records still
    name the first cube's version, which the audit takes from the version store."""
    from ecafm.ingest import ingest

    d = run.parent / "data"
    ingest([d / "raw"], run / "cubes" / "cell.zarr", fmt="gwy", ec_log=d / "ec" / "log.mpt",
           frame_sheet=d / "frames.tsv", qc_table=run / "cubes" / "cell.qc.tsv", dataset_id="cell",
           rule="ingest_dataset", wildcards={"dataset": "cell"}, frame_chunk=2)
    re = _by(reexecute(run, tmp_path / "s"), "reexec")
    assert all(f.status == OK for f in re.values()), re
    assert "taken from its filed version" in re["level/cell/cycle_0.zarr"].detail


def test_figures_and_unknown_rules_are_skipped_with_a_note(tmp_path):
    import pandas as pd

    from ecafm.store import write_table

    write_table(pd.DataFrame({"a": [1]}), tmp_path / "results" / "t.tsv", step=Step("plot_ingest"))
    f = _by(reexecute(tmp_path / "results", tmp_path / "s"), "reexec")["t.tsv"]
    assert f.status == SKIPPED and "figure" in f.detail


def test_ingest_inputs_are_told_apart(tmp_path):
    d = make_dataset(tmp_path, n_frames=2, n_cycles=1, shape=(8, 8))
    raw = sorted(d["raw"].iterdir())
    assert split_ingest_inputs([*raw, d["log"], d["frames"]]) == (raw, d["log"], d["frames"])


@pytest.mark.workflow
def test_snakemake_audit_target_passes_then_fails_on_a_tampered_chunk(tmp_path):
    """`snakemake audit_results` builds the run, audits it (report.tsv), and fails after a tamper."""
    import pandas as pd

    from tests.test_workflow import _snakemake, _workdir

    d = make_dataset(tmp_path / "data", n_frames=6, n_cycles=2, half_s=100.0, shape=(24, 24))
    wd = _workdir(tmp_path, [{"id": "cell1", "raw": str(d["raw"]), "format": "gwy",
                              "ec_log": str(d["log"]), "frames": str(d["frames"]), "metal": "Li",
                              "positive_current_plates": "true"}])
    _snakemake(wd, "--cores", "2", "audit_results")
    report = pd.read_csv(wd / "results" / "audit" / "report.tsv", sep="\t", keep_default_na=False)
    assert (report["status"] != MISMATCH).all() and (report["status"] != "ERROR").all()
    reexec = report[report["check"] == "reexec"].set_index("artifact")
    assert reexec.loc["cubes/cell1.zarr", "status"] == OK
    assert reexec.loc["register/cell1/transforms.zarr", "status"] == OK
    assert (reexec["status"] == OK).sum() >= 10
    # one register_cycle job per cycle levels, registers and links to the cycle before: three
    # stores, three records, each step re-run on its own, the transforms from the leveled cube the
    # same job wrote, the link from the ingested cube
    for c in (0, 1):
        lev, within = f"level/cell1/cycle_{c}.zarr", f"register/cell1/within/cycle_{c}.zarr"
        link = f"register/cell1/links/into_cycle_{c}.zarr"
        assert reexec.loc[lev, "status"] == OK and reexec.loc[within, "status"] == OK
        assert reexec.loc[link, "status"] == OK
        rl, rw, rk = (read_record(wd / "results" / a) for a in (lev, within, link))
        assert (rl["step"]["rule"], rw["step"]["rule"], rk["step"]["rule"]) == (
            "level_cycle", "register_cycle", "link_into_cycle")
        assert {r["run"]["snakemake_rule"] for r in (rl, rw, rk)} == {"register_cycle"}
        assert [i["path"] for i in rl["inputs"]] == ["results/cubes/cell1.zarr"]
        assert [(i["path"], i["version_id"]) for i in rw["inputs"]] == [(f"results/{lev}", rl["version_id"])]
        assert [i["path"] for i in rk["inputs"]] == ["results/cubes/cell1.zarr"]
    assert not (wd / "logs" / "level_cycle").exists() and not (wd / "logs" / "link_cycles").exists()
    # the composed drift used the link into cycle 1, not the first cycle's unlinked one
    rc = read_record(wd / "results" / "register" / "cell1" / "transforms.zarr")
    assert "results/register/cell1/links/into_cycle_1.zarr" in [i["path"] for i in rc["inputs"]]
    assert "results/register/cell1/links/into_cycle_0.zarr" not in [i["path"] for i in rc["inputs"]]

    chunk = next(p for p in sorted((wd / "results" / "register" / "cell1" / "cycle_0.zarr").rglob("*"))
                 if p.is_file() and "/c/" in p.as_posix())
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    before = chunk.stat()
    chunk.write_bytes(bytes(data))
    # a silent edit: keep the mtime so that Snakemake does not re-run the jobs downstream of it
    os.utime(chunk, ns=(before.st_atime_ns, before.st_mtime_ns))
    res = _snakemake(wd, "--cores", "2", "--forcerun", "audit_results", "audit_results", check=False)
    assert res.returncode != 0
    log = (wd / "logs" / "audit_results" / "audit.log").read_text()
    assert "MISMATCH hashes  register/cell1/cycle_0.zarr" in log
    assert chunk.relative_to(wd / "results" / "register" / "cell1" / "cycle_0.zarr").as_posix() in log


def test_stages_run_with_one_blas_thread_whoever_calls_them():
    """OpenBLAS rounds split sums differently per thread count (bench-m register_cycle cycle 3:
    another logical hash with 2 threads than with 1), and Snakemake jobs, the audit's re-run and
    the in-process pipeline each had their own count. Every entry point the rules' scripts call
    runs with one BLAS thread, and the caller's setting comes back afterwards."""
    from threadpoolctl import threadpool_limits

    from ecafm.blas import one_blas_thread
    from ecafm.ingest import ingest
    from ecafm.level import level_cycle
    from ecafm.lifetime import run_lifetime
    from ecafm.register import run_apply, run_compose, run_link, run_link_into, run_within
    from ecafm.segment import run_segment
    from ecafm.sites import run_track_sites

    if not blas_threads():
        pytest.fail("threadpoolctl finds no BLAS library: numpy without OpenBLAS?")
    with threadpool_limits(limits=2, user_api="blas"):
        outside = blas_threads()
        inside = one_blas_thread(blas_threads)()
        assert blas_threads() == outside
    assert set(inside) == {1} and max(outside) == 2
    wrapper = one_blas_thread(lambda: None).__code__
    for fn in (ingest, level_cycle, run_within, run_link, run_link_into, run_compose, run_apply,
               run_segment, run_track_sites, run_lifetime):
        assert fn.__code__ is wrapper and hasattr(fn, "__wrapped__"), fn.__name__
