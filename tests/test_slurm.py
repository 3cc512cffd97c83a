"""The workflow on a real (single-node) SLURM cluster with workflow/profiles/slurm.

Needs a running cluster: `tests/hpc/start_slurm.sh --install` (as root) starts one on localhost;
`.ci/run` does that before the test suite. Without a cluster the test skips with the reason, and
fails on CI (CI=true).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from ecafm.store import read_record, verify
from tests.conftest import REPO
from tests.helpers import make_dataset
from tests.test_workflow import _snakemake, _workdir

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

START = REPO / "tests" / "hpc" / "start_slurm.sh"
# Settings for a cluster without an accounting database (no slurmdbd): no account, squeue for
# job states, and quick first status checks because the test jobs take seconds.
SLURM_ARGS = ("--profile", str(REPO / "workflow" / "profiles" / "slurm"), "--slurm-no-account",
              "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
              "--latency-wait", "5")
# Up to registration (ingest, per-cycle level/register/link/apply, compose, figures): the stages
# spread over the cluster; later stages add nothing SLURM-specific and keep the test short.
TARGETS = ("results/register/c/registered.done", "results/figures/c/ingest.png",
           "results/figures/c/register.png")


def _unavailable(reason: str) -> None:
    msg = f"{reason}; start a test cluster with `{START.relative_to(REPO)} --install` (as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"SLURM test cluster unavailable on CI: {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    """Name of an idle SLURM node (skip, or fail on CI, when there is no working cluster)."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        _unavailable("snakemake-executor-plugin-slurm is not installed (pip install -e '.[hpc]')")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%n %t"], capture_output=True, text=True,
                             timeout=30)
    except FileNotFoundError:
        _unavailable("sinfo not found: SLURM is not installed")
    nodes = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    ready = [n for n, state in nodes.items() if state.rstrip("*") in ("idle", "mix", "alloc")]
    if out.returncode != 0 or not ready:
        _unavailable(f"no SLURM node is up (sinfo: {out.stdout.strip() or out.stderr.strip()})")
    # A node can look idle for a while after its slurmd died: run a job to be sure.
    try:
        job = subprocess.run(["srun", "-N1", "-n1", "-t", "1", "--mem", "100", "--immediate=30",
                              "true"], capture_output=True, text=True, timeout=60)
        ok, why = job.returncode == 0, job.stderr.strip()
    except subprocess.TimeoutExpired:
        ok, why = False, "srun did not return within 60 s"
    if not ok:
        _unavailable(f"node {ready[0]} is {nodes[ready[0]]} but a test job does not run ({why})")
    return ready[0]


def _logical_hashes(wd: Path) -> dict[str, str]:
    recs = sorted((wd / "results").rglob("*.prov.json"))
    return {str(r.relative_to(wd)): read_record(r.parent / r.name[: -len(".prov.json")])
            ["artifact"]["logical_sha256"] for r in recs if not r.name.endswith(".png.prov.json")}


def test_slurm_run_matches_local_run_and_records_job_ids(tmp_path, slurm_cluster):
    d = make_dataset(tmp_path / "data", n_frames=8, n_cycles=2, half_s=100.0, shape=(64, 64))
    row = {"id": "c", "raw": str(d["raw"]), "format": "gwy", "ec_log": str(d["log"]),
           "frames": str(d["frames"]), "metal": "Li", "positive_current_plates": "true"}
    local = _workdir(tmp_path / "local", [row])
    t0 = time.monotonic()
    _snakemake(local, "--cores", "2", *TARGETS)
    t_local = time.monotonic() - t0

    wd = _workdir(tmp_path / "slurm", [row])
    t0 = time.monotonic()
    res = _snakemake(wd, *TARGETS, *SLURM_ARGS)
    t_slurm = time.monotonic() - t0
    print(f"local run {t_local:.1f} s, SLURM run {t_slurm:.1f} s on node {slurm_cluster}")

    submitted = set(re.findall(r"SLURM jobid (\d+)", res.stdout + res.stderr))
    assert submitted, "no job was submitted to SLURM:\n" + res.stderr[-3000:]

    hashes = _logical_hashes(wd)
    assert len(hashes) >= 10
    assert hashes == _logical_hashes(local)

    recorded = {}
    for rec_path in (wd / "results").rglob("*.prov.json"):
        artifact = rec_path.parent / rec_path.name[: -len(".prov.json")]
        rec = read_record(artifact)
        recorded[str(artifact.relative_to(wd))] = rec["run"]["slurm_job_id"]
        assert verify(artifact) == [], artifact
    assert all(recorded.values()), {k: v for k, v in recorded.items() if not v}
    assert set(recorded.values()) <= submitted
    print(f"{len(submitted)} SLURM jobs submitted, ids {sorted(map(int, submitted))}; "
          f"{len(recorded)} artifacts record {len(set(recorded.values()))} distinct job ids")
    # One job per cycle-level step: distinct jobs wrote the two cycles' registered cubes.
    assert recorded["results/register/c/cycle_0.zarr"] != recorded["results/register/c/cycle_1.zarr"]
    # SLURM's own log of every job, kept by the profile, names the job id.
    slurm_logs = list((wd / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in slurm_logs} >= set(recorded.values())
    # Local run: no job id recorded.
    assert read_record(tmp_path / "local" / "wd" / "results" / "cubes" / "c.zarr")["run"]["slurm_job_id"] is None
