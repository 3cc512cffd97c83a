"""Run ONE workflow job in this process, as its Snakemake rule's script would (benchmark helper).

Usage: ``python benchmarks/job.py SPEC_JSON RESULT_JSON``. SPEC_JSON holds ``rule``, ``threads``
and the rule's arguments; RESULT_JSON receives the job's in-process wall time (imports
excluded), the import time and this process's own peak RSS (``VmHWM`` of /proc/self/status: the
high-water mark of the memory map created at exec). ``os.wait4`` / ``getrusage`` are not used for
it: Linux carries the parent's peak RSS into a child started by vfork (as subprocess does), so a
job started after the harness had grown to 900 MiB reported at least 900 MiB.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path


def _step(rule: str, params: dict, wildcards: dict):
    from ecafm.store import Step

    return Step(rule, params, wildcards)


def run(spec: dict) -> dict[str, float] | None:
    """Call the library function of ``spec["rule"]`` with the arguments in ``spec``; for a job of
    several steps, return each step's seconds."""
    rule, a = spec["rule"], spec["args"]
    wc = {"cycle": str(a["cycle"])} if "cycle" in a else {}
    if rule == "ingest_dataset":
        from ecafm.ingest import ingest

        ingest([a["raw"]], a["cube"], ec_log=a["ec_log"], frame_sheet=a["frames"],
               qc_table=a["qc"], dataset_id=a["dataset"], threads=spec["threads"])
    elif rule == "register_cycle":  # three steps, as the rule's script: level, estimate, link
        from ecafm.level import LevelParams, level_cycle
        from ecafm.register import RegisterParams, run_link_into, run_within

        t0 = time.perf_counter()
        lp = LevelParams()
        level_cycle(a["cube"], a["cycle"], a["leveled"], params=lp,
                    step=_step("level_cycle", asdict(lp), wc))
        t1 = time.perf_counter()
        p = RegisterParams()
        run_within(a["leveled"], a["out"], params=p, step=_step(rule, asdict(p), wc))
        t2 = time.perf_counter()
        run_link_into(a["cube"], a["cycle"], a["link"], params=p, level=lp,
                      step=_step("link_into_cycle", {"register": asdict(p), "level": asdict(lp)}, wc))
        return {"level_cycle": t1 - t0, "register_cycle": t2 - t1,
                "link_into_cycle": time.perf_counter() - t2}
    elif rule == "compose_drift":
        from ecafm.register import RegisterParams, run_compose

        p = RegisterParams()
        run_compose(a["within"], a["links"], a["cube"], a["out"], a["table"], loop_weight=p.loop_weight,
                    loop_fusion=p.loop_fusion,
                    step=_step(rule, {"loop_weight": p.loop_weight, "loop_fusion": p.loop_fusion}, wc))
    elif rule == "apply_registration":
        from ecafm.register import RegisterParams, run_apply
        from ecafm.segment import SegmentParams

        o = RegisterParams().resample_order
        tip = SegmentParams().erosion_tip_nm
        run_apply(a["leveled"], a["transforms"], a["out"], order=o, first_path=a.get("first"),
                  tip_radius_nm=tip, step=_step(rule, {"resample_order": o, "tip_radius_nm": tip}, wc))
    elif rule == "segment_cycle":
        from ecafm.segment import SegmentParams, run_segment

        p = SegmentParams()
        run_segment(a["cycle"], a["cur"], a["first"], a["transforms"], a["out"], a["table"],
                    prev=a.get("prev"), nxt=a.get("next"), prev2=a.get("prev2"), params=p, metal="Li",
                    step=_step(rule, {**asdict(p), "metal": "Li"}, wc))
    elif rule == "track_sites":
        from ecafm.segment import SegmentParams
        from ecafm.sites import run_track_sites

        p = SegmentParams()
        run_track_sites(a["segments"], a["labels"], a["sites"], a["site_cycles"], a["cycles"],
                        a["tiles"], params=p, step=_step(rule, asdict(p), wc))
    elif rule == "correlate_lifetimes":
        from ecafm.lifetime import LifetimeParams, run_lifetime

        p = LifetimeParams()
        run_lifetime(a["sites"], a["site_cycles"], a["cycles"], a["segment0"], a["out"],
                     ec_log=a.get("ec_log"), positive_current_plates=True, electrode_area_cm2=1.0,
                     params=p, step=_step(rule, asdict(p), wc))
    else:
        raise ValueError(f"unknown rule {rule!r}")


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    spec = json.loads(Path(argv[0]).read_text())
    import ecafm.store  # noqa: F401  (import cost counted apart from the job's work)
    from ecafm.snakemake_adapter import use_dask_scheduler

    use_dask_scheduler("", threads=int(spec["threads"]))  # as the rule's script does
    t1 = time.perf_counter()
    steps = run(spec)
    t2 = time.perf_counter()
    Path(argv[1]).write_text(json.dumps({"seconds": t2 - t1, "import_s": t1 - t0, "rss_mib": _vm_hwm_mib(),
                                         "steps": steps}))


def _vm_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
