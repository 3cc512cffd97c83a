"""The workflow's stages run in one process, in pipeline order (tests, benchmarks, notebooks).

Snakemake runs the same functions as separate jobs; this runner exists so that accuracy tests and
benchmarks exercise exactly the code the rules call, without Snakemake's scheduling.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ecafm.level import LevelParams, cycle_segments, level_cycle
from ecafm.register import RegisterParams, run_apply, run_compose, run_link_into, run_within
from ecafm.segment import SegmentParams
from ecafm.store import Step, open_cube

log = logging.getLogger(__name__)


def run_level_register(cube: str | Path, out_dir: str | Path, *, level: LevelParams = LevelParams(),
                       register: RegisterParams = RegisterParams(), apply: bool = True,
                       segment: SegmentParams | None = None) -> dict[str, Path]:
    """Level, register (within, link into each cycle, compose) and optionally apply, per cycle, like the workflow
    (``segment``: the tip radius of the aligned heights the apply step stores for segmentation)."""
    out = Path(out_dir)
    cycles = cycle_segments(open_cube(cube))
    lp, rp = asdict(level), asdict(register)
    lev = {c: out / "level" / f"cycle_{c}.zarr" for c in cycles}
    within = [out / "within" / f"cycle_{c}.zarr" for c in cycles]
    links = [out / "links" / f"into_cycle_{c}.zarr" for c in cycles]
    for c, w, lk in zip(cycles, within, links, strict=True):  # the three steps of a register_cycle job
        wc = {"cycle": str(c)}
        level_cycle(cube, c, lev[c], params=level, step=Step("level_cycle", lp, wc))
        run_within(lev[c], w, params=register, step=Step("register_cycle", rp, wc))
        run_link_into(cube, c, lk, params=register, level=level,
                      step=Step("link_into_cycle", {"register": rp, "level": lp}, wc))
    links = links[1:]  # the first cycle's link is unlinked
    tf = out / "transforms.zarr"
    run_compose(within, links, cube, tf, out / "transforms.tsv", loop_weight=register.loop_weight,
                loop_fusion=register.loop_fusion,
                step=Step("compose_drift", {"loop_weight": register.loop_weight,
                                            "loop_fusion": register.loop_fusion}))
    paths = {"transforms": tf, "table": out / "transforms.tsv"}
    if apply:
        tip = (segment or SegmentParams()).erosion_tip_nm
        for c in cycles:
            reg = out / f"cycle_{c}.zarr"
            run_apply(lev[c], tf, reg, order=register.resample_order, first_path=lev[cycles[0]],
                      tip_radius_nm=tip,
                      step=Step("apply_registration", {"resample_order": register.resample_order,
                                                       "tip_radius_nm": tip}, {"cycle": str(c)}))
            paths[f"cycle_{c}"] = reg
    return paths


def run_segment_sites(registered: dict[str, Path], out_dir: str | Path, *, metal: str = "Li",
                      segment: SegmentParams | None = None) -> dict[str, Path]:
    """Segment every cycle and track sites, like the workflow (after :func:`run_level_register`).

    ``registered`` is the dict returned by :func:`run_level_register` (``transforms`` and
    ``cycle_{c}``). Writes ``out_dir/segment/cycle_{c}.zarr`` (+ ``.classes.tsv``) and
    ``out_dir/sites/`` (labels.zarr, sites.tsv, site_cycles.tsv, cycles.tsv, tiles.tsv).
    """
    from ecafm.segment import run_segment
    from ecafm.sites import run_track_sites

    params = segment or SegmentParams()
    out = Path(out_dir)
    cycles = sorted(int(k.split("_")[1]) for k in registered if k.startswith("cycle_"))
    if not cycles:
        raise ValueError("no registered cycles: run run_level_register(..., apply=True) first")
    sp = asdict(params)
    segs = []
    for c in cycles:
        seg = out / "segment" / f"cycle_{c}.zarr"
        run_segment(c, registered[f"cycle_{c}"], registered[f"cycle_{cycles[0]}"],
                    registered["transforms"], seg, out / "segment" / f"cycle_{c}.classes.tsv",
                    prev=registered.get(f"cycle_{c - 1}"), nxt=registered.get(f"cycle_{c + 1}"),
                    prev2=registered.get(f"cycle_{c - 2}"),
                    params=params, metal=metal,
                    step=Step("segment_cycle", {**sp, "metal": metal}, {"cycle": str(c)}))
        segs.append(seg)
    s = out / "sites"
    paths = {"segments": segs, "labels": s / "labels.zarr", "sites": s / "sites.tsv",
             "site_cycles": s / "site_cycles.tsv", "cycles": s / "cycles.tsv",
             "tiles": s / "tiles.tsv"}
    run_track_sites(segs, paths["labels"], paths["sites"], paths["site_cycles"], paths["cycles"],
                    paths["tiles"], params=params, step=Step("track_sites", sp))
    return paths
