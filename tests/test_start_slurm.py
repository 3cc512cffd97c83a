"""tests/hpc/start_slurm.sh stop: the test cluster leaves no config behind, and never a real one.

A leftover config whose controller is down makes every SLURM client call wait ~9 s, and the SLURM
executor plugin calls `scontrol show config` at every Snakemake start, local runs included.
"""

from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO

SCRIPT = REPO / "tests" / "hpc" / "start_slurm.sh"
MARKER = "# ecafm test cluster (tests/hpc/start_slurm.sh)"


def _stop(tmp_path, conf):
    env = dict(os.environ, ECAFM_SLURM_CONF=str(conf), ECAFM_SLURM_STATE=str(tmp_path / "state"))
    return subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_stop_removes_the_test_clusters_config(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"{MARKER}\nClusterName=ecafm-test\nSlurmctldHost=localhost\n")
    out = _stop(tmp_path, conf)
    assert out.returncode == 0, out.stderr
    assert not conf.exists()


def test_stop_keeps_a_real_slurm_config(tmp_path):
    conf = tmp_path / "slurm.conf"
    text = "ClusterName=site\nSlurmctldHost=head01\n"
    conf.write_text(text)
    out = _stop(tmp_path, conf)
    assert out.returncode == 0, out.stderr
    assert conf.read_text() == text
