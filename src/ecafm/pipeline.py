"""The workflow's stages run in one process, in pipeline order (tests, benchmarks, notebooks).

Snakemake runs the same functions as separate jobs; this runner exists so that accuracy tests and
benchmarks exercise exactly the code the rules call, without Snakemake's scheduling.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ecafm.level import LevelParams, cycle_segments, level_cycle
from ecafm.register import RegisterParams, run_apply, run_compose, run_link, run_within
from ecafm.store import Step, open_cube

log = logging.getLogger(__name__)


def run_level_register(cube: str | Path, out_dir: str | Path, *, level: LevelParams = LevelParams(),
                       register: RegisterParams = RegisterParams(), apply: bool = True) -> dict[str, Path]:
    """Level, register (within, links, compose) and optionally apply, per cycle, like the workflow."""
    out = Path(out_dir)
    cycles = cycle_segments(open_cube(cube))
    lp, rp = asdict(level), asdict(register)
    lev = {c: out / "level" / f"cycle_{c}.zarr" for c in cycles}
    for c in cycles:
        level_cycle(cube, c, lev[c], params=level, step=Step("level_cycle", lp, {"cycle": str(c)}))
    within = [out / "within" / f"cycle_{c}.zarr" for c in cycles]
    for c, w in zip(cycles, within, strict=True):
        run_within(lev[c], w, params=register, step=Step("register_cycle", rp, {"cycle": str(c)}))
    links = [out / "links" / f"cycle_{c}.zarr" for c in cycles[:-1]]
    for c, lk in zip(cycles[:-1], links, strict=True):
        run_link(lev[c], lev[c + 1], lk, params=register, step=Step("link_cycles", rp, {"cycle": str(c)}))
    tf = out / "transforms.zarr"
    run_compose(within, links, cube, tf, out / "transforms.tsv", step=Step("compose_drift"))
    paths = {"transforms": tf, "table": out / "transforms.tsv"}
    if apply:
        for c in cycles:
            reg = out / f"cycle_{c}.zarr"
            run_apply(lev[c], tf, reg, step=Step("apply_registration", {}, {"cycle": str(c)}))
            paths[f"cycle_{c}"] = reg
    return paths
