"""A run killed midway (SIGKILL to the whole process group) resumes with --rerun-incomplete.

Nothing partial is taken as complete: a killed job leaves only hidden partial paths, which no
artifact is built from; after the re-run every artifact verifies against its record, the audit's
hash check passes, and the logical hashes equal those of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecafm.audit import check_hashes
from ecafm.store import read_record, verify
from tests.conftest import REPO
from tests.helpers import make_dataset
from tests.test_workflow import _snakemake, _workdir

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

# Up to registration: several per-cycle jobs to kill in the middle of, and a quick test.
TARGETS = ("results/register/c/registered.done", "results/figures/c/register.png")


def _artifacts(wd: Path) -> list[Path]:
    """Live artifacts: a record X.prov.json whose X exists (hidden partials and versions excluded)."""
    out = []
    for rec in (wd / "results").rglob("*.prov.json"):
        x = rec.parent / rec.name[: -len(".prov.json")]
        rel = x.relative_to(wd / "results")
        if x.exists() and not any(part.startswith(".") for part in rel.parts):
            out.append(x)
    return sorted(out)


def _kill_midway(wd: Path, *, min_level: int, timeout: float = 600.0) -> float:
    """Start `snakemake --cores 1`, SIGKILL its process group once `min_level` cycles are leveled."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd),
           "--cores", "1", *TARGETS]
    log = open(wd / "killed_run.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            level = [p for p in (wd / "results" / "level" / "c").glob("cycle_*.zarr")]
            if len(level) >= min_level:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended ({proc.returncode}) before it could be killed: "
                            + (wd / "killed_run.log").read_text()[-3000:])
            time.sleep(0.1)
        else:
            pytest.fail("no leveled cycle appeared in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    return time.monotonic() - t0


def test_killed_run_resumes_and_nothing_partial_counts(tmp_path):
    d = make_dataset(tmp_path / "data", n_frames=16, n_cycles=4, half_s=50.0, shape=(64, 64))
    row = {"id": "c", "raw": str(d["raw"]), "format": "gwy", "ec_log": str(d["log"]),
           "frames": str(d["frames"]), "metal": "Li", "positive_current_plates": "true"}
    wd = _workdir(tmp_path / "killed", [row])
    _kill_midway(wd, min_level=2)
    assert not (wd / "results" / "register" / "c" / "registered.done").exists()
    # What exists after the kill is complete: every visible artifact verifies against its record.
    before = _artifacts(wd)
    assert before, "nothing was written before the kill"
    for x in before:
        assert verify(x) == [], x

    # A killed Snakemake leaves its lock behind: unlock, then resume.
    _snakemake(wd, "--unlock")
    _snakemake(wd, "--cores", "2", "--rerun-incomplete", *TARGETS)
    assert (wd / "results" / "register" / "c" / "registered.done").exists()

    after = _artifacts(wd)
    assert len(after) > len(before)
    for x in after:
        assert verify(x) == [], x
        rec = read_record(x)
        assert not any(".partial-" in i["path"] for i in rec["inputs"]), (x, rec["inputs"])
    hashes = [f for f in check_hashes(wd / "results")]
    assert hashes and not [f for f in hashes if f.failed], [f for f in hashes if f.failed]
    # Leftover hidden partial paths (the killed job's) are never outputs or inputs of a job.
    partials = [p for p in (wd / "results").rglob(".*.partial-*")]
    assert all(p.name.startswith(".") for p in partials)

    clean = _workdir(tmp_path / "clean", [row])
    _snakemake(clean, "--cores", "2", *TARGETS)
    logical = {str(x.relative_to(wd)): read_record(x)["artifact"]["logical_sha256"]
               for x in after if x.suffix != ".png"}
    expect = {str(x.relative_to(clean)): read_record(x)["artifact"]["logical_sha256"]
              for x in _artifacts(clean) if x.suffix != ".png"}
    assert logical == expect
