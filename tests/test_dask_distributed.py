"""The optional dask.distributed scheduler gives the same results as the threaded one."""

from __future__ import annotations

import dask
import pytest

from ecafm.ingest import ingest
from ecafm.level import LevelParams, level_cycle
from ecafm.register import RegisterParams, run_within
from ecafm.snakemake_adapter import use_dask_scheduler
from ecafm.store import Step, open_cube, read_record
from tests.helpers import blas_threads, make_dataset
from tests.test_workflow import _snakemake, _workdir

distributed = pytest.importorskip("distributed", reason="dask.distributed not installed (ecafm[hpc])")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c:
        yield c


@pytest.fixture
def dataset(tmp_path):
    d = make_dataset(tmp_path / "data", n_frames=8, n_cycles=2, half_s=100.0, shape=(64, 64))
    return d


def _leveled_cycle(tmp_path, d):
    cube = tmp_path / "cube.zarr"
    ingest([d["raw"]], cube, fmt="gwy", ec_log=d["log"], frame_sheet=d["frames"])
    out = tmp_path / "level0.zarr"
    level_cycle(cube, 0, out, params=LevelParams(), step=Step(rule="level_cycle"))
    return out


def test_register_cycle_on_distributed_scheduler_matches_threads(tmp_path, dataset, cluster):
    leveled = _leveled_cycle(tmp_path, dataset)
    step = Step(rule="register_cycle", params={}, inputs=(str(leveled),))
    assert use_dask_scheduler("", threads=2) is None
    run_within(leveled, tmp_path / "threads.zarr", params=RegisterParams(), step=step)
    client = use_dask_scheduler(cluster.scheduler_address, threads=2)
    try:
        assert dask.config.get("scheduler") == "dask.distributed"
        before = sum(client.run(lambda dask_worker: len(dask_worker.data) + dask_worker.state.executed_count).values())
        run_within(leveled, tmp_path / "distributed.zarr", params=RegisterParams(), step=step)
        after = sum(client.run(lambda dask_worker: len(dask_worker.data) + dask_worker.state.executed_count).values())
        worker_blas = list(client.run(blas_threads).values())
    finally:
        client.close()
        use_dask_scheduler("", threads=1)
    assert after > before, "no task ran on the distributed workers"
    # the stages limit BLAS to one thread in their own process; the workers have one from their
    # nanny (distributed.nanny.pre-spawn-environ), so partial sums round the same way
    assert all(worker_blas) and {n for t in worker_blas for n in t} == {1}, worker_blas
    a = read_record(tmp_path / "threads.zarr")["artifact"]
    b = read_record(tmp_path / "distributed.zarr")["artifact"]
    assert a["logical_sha256"] == b["logical_sha256"]
    assert open_cube(tmp_path / "distributed.zarr").sizes == open_cube(tmp_path / "threads.zarr").sizes


@pytest.mark.workflow
def test_workflow_attaches_heavy_rules_to_scheduler(tmp_path, dataset, cluster):
    """`--config dask_scheduler=ADDRESS` reaches the jobs (as a resource) and changes no result."""
    row = {"id": "c", "raw": str(dataset["raw"]), "format": "gwy", "ec_log": str(dataset["log"]),
           "frames": str(dataset["frames"]), "metal": "Li", "positive_current_plates": "true"}
    target = "results/register/c/within/cycle_0.zarr"
    hashes = []
    for name, extra in (("threads", ()), ("dist", ("--config", f"dask_scheduler={cluster.scheduler_address}"))):
        wd = _workdir(tmp_path / name, [row])
        _snakemake(wd, "--cores", "2", target, *extra)
        hashes.append(read_record(wd / target)["artifact"]["logical_sha256"])
        log = (wd / "logs" / "register_cycle" / "c" / "cycle_0.log").read_text()
        assert ("distributed scheduler" in log) == bool(extra), log
    assert hashes[0] == hashes[1]
    # Changing only the scheduler re-runs nothing.
    res = _snakemake(wd, "-n", "--cores", "2", target)
    assert "Nothing to be done" in res.stdout + res.stderr


def test_threaded_jobs_do_not_import_distributed(tmp_path, dataset):
    """A job on the threaded scheduler never imports dask.distributed (1.1 s per job here), even
    where it is installed: the scheduler is given as a function and rechunking by method name.
    Run in a fresh interpreter, through a whole level_cycle job (open, rechunk, compute, write)."""
    import subprocess
    import sys

    cube = tmp_path / "cube.zarr"
    ingest([dataset["raw"]], cube, fmt="gwy", ec_log=dataset["log"], frame_sheet=dataset["frames"])
    code = (
        "import sys, dask\n"
        "from ecafm.snakemake_adapter import use_dask_scheduler\n"
        "from ecafm.level import LevelParams, level_cycle\n"
        "from ecafm.store import Step\n"
        "use_dask_scheduler('', threads=2)\n"
        "assert dask.config.get('num_workers') == 2\n"
        f"level_cycle({str(cube)!r}, 0, {str(tmp_path / 'lev.zarr')!r}, params=LevelParams(), "
        "step=Step(rule='level_cycle'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'distributed')[:3])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert (tmp_path / "lev.zarr" / "zarr.json").exists()
