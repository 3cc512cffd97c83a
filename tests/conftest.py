"""Shared fixtures: real-file locations (skip on a user's machine, fail on CI when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


def shared_file(rel: str) -> Path:
    """Path of a real fixture under ../shared/data; skip (or fail on CI) when absent."""
    p = SHARED / rel
    if not p.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"fixture {p} missing on CI (../shared must sit beside the checkout)")
        pytest.skip(f"real fixture {p} not present on this machine")
    return p


@pytest.fixture
def real():
    """real("spm/x.002") -> ../shared/data/real/spm/x.002 (skip or fail when absent)."""
    return lambda rel: shared_file(f"real/{rel}")


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: runs the workflow on a SLURM cluster "
                            "(tests/hpc/start_slurm.sh starts one on localhost)")
