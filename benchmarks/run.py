"""ecafm performance harness (issue 9): stage times, memory, Snakemake overhead, side-by-side ratios.

Run from the repository root with ecafm's venv::

    python benchmarks/run.py --preset bench-s            # full: ~15 min on 2 cores
    python benchmarks/run.py --preset bench-s --quick    # smaller data set, fewer repeats
    python benchmarks/run.py --preset bench-m            # 512^2 frames (generation ~2.5 min)

Data, Snakemake work directories and the machine-readable results go to ``benchmarks/data/``
(gitignored); the figure to ``--figure`` (default ``benchmarks/results.png``). TopoStats is
compared only when ``benchmarks/setup_topostats.sh`` has created ``benchmarks/.venv-topostats``.
Nothing here is a test: numbers are reported against the issue's goals, never asserted.
"""

from __future__ import annotations

import os

# Micro-benchmarks are single-threaded (the FFT floor is defined with 1 worker); subprocesses
# (Snakemake, per-job runs) get the environment as it was before this.
_ENV = dict(os.environ)
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
TOPO_PY = HERE / ".venv-topostats" / "bin" / "python"
MIB = 1024.0

#: scaling data sets: N and 10N frames (cycles) of the same preset; bench-s needs a wider margin
#: for the drift of 20 cycles.
SCALING = {"bench-s": ({"n_cycles": 2, "pad_frac": 0.4}, {"n_cycles": 20, "pad_frac": 0.4}),
           "bench-m": ({"n_cycles": 2}, {}),
           "bench-l": ({"n_cycles": 3}, {})}


# --------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dataset_name(preset: str, overrides: dict) -> str:
    from ecafm.synth import resolve_params

    p = resolve_params(preset, overrides)
    extra = "".join(f"_{k}{v}" for k, v in sorted(overrides.items()) if k != "n_cycles")
    return f"{preset}_c{p.n_cycles}{extra}".replace(".", "p")


def ensure_data(preset: str, overrides: dict) -> dict:
    """Generate (once) the synthetic data set; returns its paths and the generation time."""
    name = dataset_name(preset, overrides)
    d = DATA / name
    syn = d / "synth"
    gen_s = None
    if not (syn / "truth.zarr.prov.json").exists():
        log(f"generating {name} (preset {preset}, overrides {overrides})")
        shutil.rmtree(syn, ignore_errors=True)
        t = time.perf_counter()
        # in a child: generating in this process would raise its RSS, and Linux reports a
        # forked child's peak RSS as at least its parent's at the fork (every later job's
        # peak RSS then read ~911 MiB on bench-m)
        code = ("import json, sys; from ecafm.synth import synth; "
                "synth(sys.argv[1], 0, sys.argv[2], overrides=json.loads(sys.argv[3]) or None)")
        subprocess.run([sys.executable, "-c", code, preset, str(syn), json.dumps(overrides)], check=True,
                       env=_ENV)
        gen_s = time.perf_counter() - t
    return {"name": name, "dir": d, "raw": syn / "raw", "ec_log": syn / "ec" / "log.mpt",
            "frames": syn / "frames.tsv", "truth": syn / "truth.zarr", "generate_s": gen_s}


def run_child(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None,
              stdout=subprocess.DEVNULL) -> tuple[float, float, int]:
    """Run a command; (wall s, peak RSS MiB of that child alone, return code)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env or _ENV, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        log(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n{err[-3000:]}")
    return wall, ru.ru_maxrss / MIB, p.returncode


def run_job(rule: str, args: dict, threads: int, work: Path) -> dict:
    """One workflow job in its own process (benchmarks/job.py): time and peak RSS."""
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{rule}_{args.get('cycle', 'all')}"
    spec, res = work / f"{tag}.spec.json", work / f"{tag}.result.json"
    spec.write_text(json.dumps({"rule": rule, "threads": threads,
                                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()}},
                               default=str))
    wall, rss, rc = run_child([sys.executable, str(HERE / "job.py"), str(spec), str(res)], cwd=REPO)
    if rc != 0:
        raise RuntimeError(f"job {tag} failed")
    r = json.loads(res.read_text())
    # the job's own high-water mark; wait4's value can include the harness's (see job.py)
    return {"rule": rule, "cycle": args.get("cycle", -1), "seconds": r["seconds"],
            "import_s": r["import_s"], "wall_s": wall, "rss_mib": r.get("rss_mib") or rss,
            "steps": r.get("steps") or {rule: r["seconds"]}}


def median_time(fn, *, reps: int, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls (after one warm-up call)."""
    fn()
    ts = []
    start = time.perf_counter()
    while len(ts) < reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# --------------------------------------------------------------------------- stages in process
def stage_jobs(data: dict, out: Path) -> list[dict]:
    """Every job of the workflow (ingest -> lifetime), each in its own process, in rule order."""
    from ecafm.level import cycle_segments
    from ecafm.store import open_cube

    shutil.rmtree(out, ignore_errors=True)
    work = out / "jobs"
    cube = out / "cube.zarr"
    jobs = [run_job("ingest_dataset", {"raw": data["raw"], "cube": cube, "ec_log": data["ec_log"],
                                       "frames": data["frames"], "qc": out / "cube.qc.tsv",
                                       "dataset": data["name"]}, 1, work)]
    cycles = cycle_segments(open_cube(cube))
    lev = {c: out / "level" / f"cycle_{c}.zarr" for c in cycles}
    within = {c: out / "within" / f"cycle_{c}.zarr" for c in cycles}
    links = {c: out / "links" / f"into_cycle_{c}.zarr" for c in cycles}
    reg = {c: out / "register" / f"cycle_{c}.zarr" for c in cycles}
    seg = {c: out / "segment" / f"cycle_{c}.zarr" for c in cycles}
    tf = out / "transforms.zarr"
    for c in cycles:
        jobs.append(run_job("register_cycle", {"cube": cube, "leveled": lev[c], "out": within[c],
                                               "link": links[c], "cycle": c}, 2, work))
    jobs.append(run_job("compose_drift", {"within": [str(within[c]) for c in cycles],
                                          "links": [str(links[c]) for c in cycles[1:]],
                                          "cube": cube, "out": tf, "table": out / "transforms.tsv"}, 1, work))
    for c in cycles:
        jobs.append(run_job("apply_registration", {"leveled": lev[c], "transforms": tf, "out": reg[c],
                                                   "first": lev[cycles[0]], "cycle": c}, 2, work))
    for c in cycles:
        a = {"cycle": c, "cur": reg[c], "first": reg[cycles[0]], "transforms": tf, "out": seg[c],
             "table": out / "segment" / f"cycle_{c}.classes.tsv"}
        if c - 1 in reg:
            a["prev"] = reg[c - 1]
        if c - 2 in reg:
            a["prev2"] = reg[c - 2]
        if c + 1 in reg:
            a["next"] = reg[c + 1]
        jobs.append(run_job("segment_cycle", a, 1, work))
    s = out / "sites"
    jobs.append(run_job("track_sites", {"segments": [str(seg[c]) for c in cycles], "labels": s / "labels.zarr",
                                        "sites": s / "sites.tsv", "site_cycles": s / "site_cycles.tsv",
                                        "cycles": s / "cycles.tsv", "tiles": s / "tiles.tsv"}, 1, work))
    jobs.append(run_job("correlate_lifetimes", {"sites": s / "sites.tsv", "site_cycles": s / "site_cycles.tsv",
                                                "cycles": s / "cycles.tsv", "segment0": seg[cycles[0]],
                                                "out": out / "lifetime", "ec_log": data["ec_log"]}, 1, work))
    return jobs


STAGE_OF = {"ingest_dataset": "ingest", "level_cycle": "level", "register_cycle": "register",
            "link_cycles": "register", "link_into_cycle": "register", "compose_drift": "register",
            "apply_registration": "register", "segment_cycle": "segment", "track_sites": "sites",
            "correlate_lifetimes": "lifetime"}


def summarize_jobs(jobs: list[dict], n_frames: int) -> dict:
    by_rule: dict[str, dict] = {}
    for j in jobs:
        r = by_rule.setdefault(j["rule"], {"jobs": 0, "seconds": 0.0, "max_rss_mib": 0.0})
        r["jobs"] += 1
        r["seconds"] += j["seconds"]
        r["max_rss_mib"] = max(r["max_rss_mib"], j["rss_mib"])
    by_stage: dict[str, dict] = {}
    for j in jobs:  # a job of several steps (register_cycle: level, estimate, link) counts in each stage
        for step, sec in j.get("steps", {j["rule"]: j["seconds"]}).items():
            s = by_stage.setdefault(STAGE_OF[step], {"seconds": 0.0, "max_rss_mib": 0.0, "jobs": 0})
            s["seconds"] += sec
            s["jobs"] += 1
            s["max_rss_mib"] = max(s["max_rss_mib"], j["rss_mib"])
    for s in by_stage.values():
        s["frames_per_s"] = n_frames / s["seconds"] if s["seconds"] > 0 else float("inf")
        s["ms_per_frame"] = 1e3 * s["seconds"] / n_frames
    total = sum(j["seconds"] for j in jobs)
    return {"by_rule": by_rule, "by_stage": by_stage, "total_s": total,
            "ms_per_frame": 1e3 * total / n_frames,
            "import_s_median": statistics.median(j["import_s"] for j in jobs),
            "max_rss_mib": max(j["rss_mib"] for j in jobs)}


# --------------------------------------------------------------------------- side by side
def micro_register(leveled: Path, reps: int, n_pairs: int) -> dict:
    """Per frame pair: FFT floor, scikit-image, ecafm estimate_shift and the stage's estimate_pair."""
    import scipy.fft as sfft
    from skimage.registration import phase_cross_correlation

    from ecafm.kernels.register import estimate_shift
    from ecafm.register import RegisterParams, estimate_pair
    from ecafm.store import open_cube

    h = open_cube(leveled)["height"].values.astype(np.float32)
    pairs = [(h[i], h[i + 1]) for i in range(min(n_pairs, h.shape[0] - 1))]
    params = RegisterParams()
    a0, b0 = pairs[0]

    def fft_floor(a=a0, b=b0):
        fa = sfft.rfft2(a, workers=1)
        fb = sfft.rfft2(b, workers=1)
        sfft.irfft2(fb * fa.conj(), s=a.shape, workers=1)

    def fft_r2c(a=a0):
        sfft.rfft2(a, workers=1)

    out = {"frame_shape": list(a0.shape), "pairs": len(pairs)}
    out["fft_floor_ms"] = 1e3 * median_time(fft_floor, reps=max(reps * 5, 20), min_time=0.5)
    # one forward transform alone, for reading the figure (1.35-1.67 ms at 512^2), which
    # does not say how many transforms it counts: 1.27 ms here against 4.47 ms for the floor
    # above (idle, session 16), while session 2 measured that floor at 1.37 ms on this machine kind
    out["fft_r2c_ms"] = 1e3 * median_time(fft_r2c, reps=max(reps * 5, 20), min_time=0.5)
    sk, sh, pa = [], [], []
    for a, b in pairs:
        sk.append(median_time(lambda a=a, b=b: phase_cross_correlation(a, b, upsample_factor=100), reps=reps))
        sh.append(median_time(lambda a=a, b=b: estimate_shift(a, b), reps=reps))
        pa.append(median_time(lambda a=a, b=b: estimate_pair(a, b, params=params), reps=max(1, reps // 2)))
    out["skimage_ms"] = 1e3 * statistics.median(sk)
    out["estimate_shift_ms"] = 1e3 * statistics.median(sh)
    out["estimate_pair_ms"] = 1e3 * statistics.median(pa)
    return out


def micro_level(cube: Path, n_frames: int, reps: int, topo: bool) -> dict:
    """Per frame: ecafm's leveling (as the stage calls it) vs TopoStats' filter on the same frames."""
    from ecafm.level import LevelParams, _level_one
    from ecafm.store import open_cube

    ds = open_cube(cube)
    idx = np.flatnonzero(ds["frame_ok"].values)[:n_frames]
    frames = ds["height"].values[idx].astype(np.float32)
    px = float(ds.attrs["pixel_size_nm"][0])
    p = LevelParams()
    t = [median_time(lambda f=f: _level_one(f, params=p), reps=reps) for f in frames]
    out = {"frames": int(len(frames)), "frame_shape": list(frames.shape[1:]),
           "ecafm_ms": 1e3 * statistics.median(t), "topostats_ms": None, "topostats_version": None,
           "topostats_note": None}
    if not topo:
        out["topostats_note"] = "skipped (--quick)"
    elif not TOPO_PY.exists():
        out["topostats_note"] = "benchmarks/.venv-topostats missing: run benchmarks/setup_topostats.sh"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "frames.npy", frames)
            res = Path(tmp) / "topo.json"
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
            # cwd: TopoStats opens a log file named after the working directory at import
            _, _, rc = run_child([str(TOPO_PY), str(HERE / "topostats_filter.py"), str(Path(tmp) / "frames.npy"),
                                  str(px), str(reps), str(res)], env=env, cwd=Path(tmp))
            if rc == 0:
                r = json.loads(res.read_text())
                out.update(topostats_ms=r["ms_median"], topostats_version=r["version"])
            else:
                out["topostats_note"] = "TopoStats run failed (see the harness output)"
    return out


def baseline(cube: Path, truth: Path, out: Path) -> dict:
    res = out / "baseline.json"
    wall, rss, rc = run_child([sys.executable, str(HERE / "baseline.py"), str(cube), "--truth", str(truth),
                               "--json", str(res)], cwd=REPO)
    if rc != 0:
        raise RuntimeError("baseline failed")
    r = json.loads(res.read_text())
    r["peak_rss_mib"] = rss
    r["wall_s"] = wall
    return r


def registration_accuracy(transforms: Path, truth: Path) -> dict:
    from ecafm.score import registration_errors
    from ecafm.store import open_cube

    return registration_errors(open_cube(transforms).load(), open_cube(truth))


# --------------------------------------------------------------------------- Snakemake
def snakemake_run(data: dict, cores: int) -> dict:
    """`python -m snakemake --cores N` on the pre-generated data set, in a fresh work directory."""
    import pandas as pd

    wd = data["dir"] / f"smk_cores{cores}"
    shutil.rmtree(wd, ignore_errors=True)
    (wd / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "config.yaml", wd / "config" / "config.yaml")
    row = {"id": data["name"], "raw": str(data["raw"]), "format": "gwy", "ec_log": str(data["ec_log"]),
           "frames": str(data["frames"]), "metal": "Li", "positive_current_plates": "true",
           "clock_offset_s": "", "channel": "", "electrode_area_cm2": "1.0", "synth": "", "notes": "benchmark"}
    pd.DataFrame([row]).to_csv(wd / "config" / "datasets.tsv", sep="\t", index=False)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd),
           "--cores", str(cores), "--quiet", "all"]
    wall, _, rc = run_child(cmd, cwd=REPO)
    if rc != 0:
        raise RuntimeError(f"snakemake --cores {cores} failed")
    bench = []
    for f in sorted((wd / "benchmarks").glob("*/*/*.tsv")) + sorted((wd / "benchmarks").glob("*/*.tsv")):
        t = pd.read_csv(f, sep="\t")
        rule = f.relative_to(wd / "benchmarks").parts[0]
        cyc = int(f.stem.split("_")[1]) if f.stem.startswith("cycle_") else -1
        bench.append({"rule": rule, "cycle": cyc, "s": float(t["s"].iloc[0]),
                      "max_rss_mib": float(t["max_rss"].iloc[0]) * 1e6 / 2**20})
    n_jobs = sum(1 for _ in (wd / "logs").rglob("*.log"))
    # Snakemake's own start (imports, plugins, parsing, DAG) is serial work in every run: time a dry
    # run of the finished directory, where there is nothing left to do.
    dry = [run_child(cmd + ["-n"], cwd=REPO)[0] for _ in range(2)]
    return {"cores": cores, "wall_s": wall, "jobs": n_jobs, "benchmarks": bench, "startup_s": min(dry)}


def snakemake_pair(data: dict, cores_list: list[int], repeats: int) -> dict:
    """Snakemake runs interleaved (1, 2, 1, 2, ...): the machine's speed drifts by 10-20% over
    minutes, so one ``--cores 1`` run followed by one ``--cores 2`` run gives their ratio to about
    +-0.15. Each entry is the first run's record with ``wall_s`` the median of ``wall_s_runs``."""
    runs: dict[str, list[dict]] = {str(c): [] for c in cores_list}
    for rep in range(repeats):
        for cores in cores_list:
            log(f"snakemake --cores {cores} on {data['name']} (run {rep + 1} of {repeats})")
            runs[str(cores)].append(snakemake_run(data, cores))
    out = {}
    for c, rs in runs.items():
        walls = [x["wall_s"] for x in rs]
        out[c] = {**rs[0], "wall_s": statistics.median(walls), "wall_s_runs": walls}
    if len(cores_list) == 2 and repeats > 1:
        a, b = (str(c) for c in cores_list)
        out["pairwise_speedups"] = [x["wall_s"] / y["wall_s"] for x, y in zip(runs[a], runs[b], strict=True)]
    return out


def slurm_probe() -> dict:
    """How long `scontrol show config` takes when the SLURM executor plugin is installed.

    snakemake-executor-plugin-slurm runs it at import, so in every `snakemake` call, with a 10 s
    timeout: on a machine where SLURM is installed but its controller is down, each run waits ~9 s
    before its first job. The report names it so that a slow start is not mistaken for ecafm's.
    """
    import importlib.util

    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None or not shutil.which("scontrol"):
        return {"plugin_queries_scontrol": False}
    t0 = time.perf_counter()
    rc = subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=30).returncode
    return {"plugin_queries_scontrol": True, "scontrol_s": time.perf_counter() - t0, "scontrol_rc": rc}


def snakemake_overhead(smk: dict, jobs: list[dict]) -> dict:
    """Per rule: Snakemake's benchmark seconds minus the in-process seconds of the same job."""
    inproc = {(j["rule"], j["cycle"]): j["seconds"] for j in jobs}
    per_rule: dict[str, list[float]] = {}
    for b in smk["benchmarks"]:
        k = (b["rule"], b["cycle"])
        if k in inproc:
            per_rule.setdefault(b["rule"], []).append(b["s"] - inproc[k])
    out = {r: {"median_s": statistics.median(v), "jobs": len(v)} for r, v in per_rule.items()}
    sum_inproc = sum(j["seconds"] for j in jobs)
    out["_whole_run"] = {"wall_s": smk["wall_s"], "in_process_sum_s": sum_inproc, "jobs": smk["jobs"],
                         "per_job_s": (smk["wall_s"] - sum_inproc) / max(smk["jobs"], 1)}
    return out


# --------------------------------------------------------------------------- misc
def help_start(reps: int = 5) -> float:
    exe = Path(sys.executable).with_name("ecafm")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "ecafm.cli", "--help"]
    return statistics.median(run_child(cmd)[0] for _ in range(reps))


def machine() -> dict:
    import importlib.metadata as md

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next((int(ln.split()[1]) / 2**20 for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), float("nan"))
    libs = {}
    for name in ("ecafm", "numpy", "scipy", "scikit-image", "xarray", "zarr", "dask", "snakemake"):
        try:
            libs[name] = md.version(name)
        except md.PackageNotFoundError:
            libs[name] = None
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "nproc": os.cpu_count(), "ram_gib": round(mem, 1),
            "cpu": cpu, "python": platform.python_version(), "libs": libs, "git": git,
            "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def cube_mib(cube: Path) -> float:
    from ecafm.store import open_cube

    h = open_cube(cube)["height"]
    return h.size * 4 / 2**20


# --------------------------------------------------------------------------- goals and report
def goals(r: dict) -> list[tuple[str, str, str, bool | None]]:
    """(goal, target, measured, met) rows."""
    rows = []
    reg = r["register_pair"]
    fl = reg["fft_floor_ms"]
    rows.append(("registration per frame pair vs FFT floor (stage: estimate_pair)", "<= 2x",
                 f"{reg['estimate_pair_ms'] / fl:.1f}x ({reg['estimate_pair_ms']:.1f} ms vs {fl:.2f} ms); "
                 f"one estimate_shift {reg['estimate_shift_ms'] / fl:.1f}x; skimage {reg['skimage_ms'] / fl:.1f}x",
                 reg["estimate_pair_ms"] <= 2 * fl))
    lv = r["level"]
    if lv["topostats_ms"]:
        ratio = lv["topostats_ms"] / lv["ecafm_ms"]
        rows.append(("leveling vs TopoStats filter per frame", ">= 20x faster",
                     f"{ratio:.1f}x ({lv['ecafm_ms']:.1f} ms vs {lv['topostats_ms']:.1f} ms, TopoStats "
                     f"{lv['topostats_version']})", ratio >= 20))
    else:
        ref = 486.0 if lv["frame_shape"][0] >= 512 else 138.0
        rows.append(("leveling vs TopoStats filter per frame", ">= 20x faster",
                     f"TopoStats not run ({lv['topostats_note']}); vs the issue's {ref:.0f} ms: "
                     f"{ref / lv['ecafm_ms']:.1f}x ({lv['ecafm_ms']:.1f} ms)", None))
    smk2 = r["snakemake"].get("2")
    bl = r["baseline"]
    bl_ms = bl["per_frame_ms"]
    if smk2:
        ms = 1e3 * smk2["wall_s"] / r["frames"]
        rows.append(("whole pipeline per frame, 2 cores (snakemake) vs baseline level+register", "<= 1x",
                     f"{ms / bl_ms:.2f}x ({ms:.0f} ms vs {bl_ms:.0f} ms per frame)", ms <= bl_ms))
    d = r.get("drift_160")
    if d:
        rows.append((f"drift error after {d['frames'] - 1} chained frames", "<= 0.1 px",
                     f"{d['last_frame_error_px']:.3f} px (baseline {d['baseline_last_frame_error_px']:.2f} px)",
                     d["last_frame_error_px"] <= 0.1))
    if smk2 and r["snakemake"].get("1"):
        sp = r["snakemake"]["1"]["wall_s"] / smk2["wall_s"]
        pw = r["snakemake"].get("pairwise_speedups")
        each = f" (medians of {len(pw)} interleaved runs; pairs {min(pw):.2f}-{max(pw):.2f})" if pw else ""
        rows.append(("2-core speedup (snakemake --cores 1 / --cores 2)", ">= 1.7", f"{sp:.2f}{each}", sp >= 1.7))
    sc = r.get("scaling")
    if sc:
        ratio = sc["10N"]["total_s"] / sc["N"]["total_s"]
        rows.append((f"time 10N / N ({sc['N']['frames']} -> {sc['10N']['frames']} frames)", "<= 11",
                     f"{ratio:.2f} (frames x{sc['10N']['frames'] / sc['N']['frames']:.2f})", ratio <= 11))
        a, b = sc["N"]["max_rss_mib"], sc["10N"]["max_rss_mib"]
        mx = max(r["jobs_summary"]["max_rss_mib"], b)
        rows.append(("peak RSS per job", "<= 1024 MiB", f"{mx:.0f} MiB (largest job)", mx <= 1024))
        rows.append((f"peak RSS flat N -> 10N at {sc['frame_px']}^2 px", "within 10%",
                     f"{a:.0f} -> {b:.0f} MiB ({100 * (b / a - 1):+.1f}%)", abs(b / a - 1) <= 0.10))
    cm = r["cube_mib"]
    rows.append(("no job holds the whole cube", "max job RSS < cube size",
                 f"max job RSS {r['jobs_summary']['max_rss_mib']:.0f} MiB vs cube {cm:.0f} MiB "
                 f"(this preset, {r['preset']})", None))
    rows.append(("`ecafm --help` start", "< 0.5 s", f"{r['help_s']:.2f} s", r["help_s"] < 0.5))
    return rows


def report_md(r: dict) -> str:
    m = r["machine"]
    lines = [f"# ecafm benchmark: {r['preset']}{' (quick)' if r['quick'] else ''}", "",
             f"- date {m['date']}, git {m['git']}; {m['cpu']}, {m['nproc']} CPUs, {m['ram_gib']} GiB RAM",
             f"- load at start: `{m['uptime_start']}`; at end: `{r['uptime_end']}`",
             "- " + ", ".join(f"{k} {v}" for k, v in m["libs"].items()) + f", python {m['python']}",
             f"- data set {r['dataset']}: {r['frames']} frames of {r['frame_px']}^2 px; cube {r['cube_mib']:.0f} MiB "
             "float32", "", "## Goals", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g, t, v, ok in goals(r):
        lines.append(f"| {g} | {t} | {v} | {'yes' if ok else ('n/a' if ok is None else 'NO')} |")
    lines += ["", "## Stages in process (one process per job, sequential)", "",
              "Steps: a `register_cycle` job is three (leveling, the within-cycle estimate, the link into the "
              "cycle), each counted in its stage.", "",
              "| stage | steps | s | ms/frame | frames/s | peak RSS per job (MiB) |", "|---|---|---|---|---|---|"]
    for st, s in r["jobs_summary"]["by_stage"].items():
        lines.append(f"| {st} | {s['jobs']} | {s['seconds']:.2f} | {s['ms_per_frame']:.1f} | "
                     f"{s['frames_per_s']:.1f} | {s['max_rss_mib']:.0f} |")
    js = r["jobs_summary"]
    lines.append(f"| **all** | {sum(s['jobs'] for s in js['by_stage'].values())} | {js['total_s']:.2f} | "
                 f"{js['ms_per_frame']:.1f} | {1e3 / js['ms_per_frame']:.1f} | {js['max_rss_mib']:.0f} |")
    lines.append(f"\nInterpreter start + imports per job (not in the table): median {js['import_s_median']:.2f} s.")
    lines += ["", "## Snakemake", ""]
    for c, s in sorted((c, s) for c, s in r["snakemake"].items() if c.isdigit()):
        start = f"; Snakemake's own start (dry run, nothing to do) {s['startup_s']:.1f} s" if "startup_s" in s else ""
        runs = s.get("wall_s_runs", [s["wall_s"]])
        each = f" (median of {len(runs)} runs: {', '.join(f'{w:.1f}' for w in runs)} s)" if len(runs) > 1 else ""
        lines.append(f"- `--cores {c}`: {s['wall_s']:.1f} s wall{each}, {s['jobs']} jobs, "
                     f"{1e3 * s['wall_s'] / r['frames']:.0f} ms per frame{start}")
    if r["snakemake"].get("pairwise_speedups"):
        lines.append("- 2-core speedup of each interleaved pair: "
                     + ", ".join(f"{x:.2f}" for x in r["snakemake"]["pairwise_speedups"]))
    sp = r.get("slurm_probe", {})
    if sp.get("plugin_queries_scontrol"):
        lines.append(f"- the SLURM executor plugin is installed; its `scontrol show config` at import took "
                     f"{sp['scontrol_s']:.1f} s (exit {sp['scontrol_rc']}) in this run")
    if r.get("overhead"):
        lines += ["", "Overhead per job (Snakemake benchmark seconds minus in-process seconds; `--cores 1`):", "",
                  "| rule | jobs | median overhead (s) |", "|---|---|---|"]
        for rule, o in r["overhead"].items():
            if not rule.startswith("_"):
                lines.append(f"| {rule} | {o['jobs']} | {o['median_s']:.2f} |")
        w = r["overhead"]["_whole_run"]
        lines.append(f"\nWhole run: {w['wall_s']:.1f} s wall vs {w['in_process_sum_s']:.1f} s in process over "
                     f"{w['jobs']} jobs (plots included in the wall time): {w['per_job_s']:.2f} s per job.")
    reg, lv, bl = r["register_pair"], r["level"], r["baseline"]
    topo = f"{lv['topostats_ms']:.1f} ms" if lv["topostats_ms"] else lv["topostats_note"]
    lines += ["", "## Side by side (single thread, same frames)", "",
              f"- registration per pair at {reg['frame_shape'][0]}^2: FFT floor {reg['fft_floor_ms']:.2f} ms "
              f"(2 rfft2 + product + irfft2; one rfft2 alone {reg.get('fft_r2c_ms', float('nan')):.2f} ms); "
              f"scikit-image pcc(upsample 100) {reg['skimage_ms']:.1f} ms; ecafm estimate_shift "
              f"{reg['estimate_shift_ms']:.1f} ms; ecafm estimate_pair (stage: QC + stable regions + row drift) "
              f"{reg['estimate_pair_ms']:.1f} ms",
              f"- leveling per frame: ecafm {lv['ecafm_ms']:.1f} ms; TopoStats {topo}",
              f"- baseline (plane + row median + skimage vs previous): level {bl['level_ms_median']:.1f} ms, "
              f"register {bl['register_ms_median']:.1f} ms, {bl['per_frame_ms']:.1f} ms per frame; peak RSS "
              f"{bl['peak_rss_mib']:.0f} MiB; drift after {bl['frames'] - 1} frames {bl['last_frame_error_px']:.2f} px",
              f"- ecafm registration accuracy on this data set: {json.dumps(r['accuracy'])}"]
    if r.get("scaling"):
        sc = r["scaling"]
        lines += ["", "## N vs 10N", "", "| | frames | s (in process) | ms/frame | max RSS per job (MiB) |",
                  "|---|---|---|---|---|"]
        for k in ("N", "10N"):
            s = sc[k]
            lines.append(f"| {k} ({s['dataset']}) | {s['frames']} | {s['total_s']:.1f} | {s['ms_per_frame']:.1f} | "
                         f"{s['max_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def figure(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    st = r["jobs_summary"]["by_stage"]
    names = list(st)
    ax[0].bar(names, [st[n]["ms_per_frame"] for n in names], color="tab:blue")
    ax[0].set_ylabel("ms per frame (in process, sum of jobs)")
    ax[0].set_title(f"{r['dataset']}: time per stage ({r['frames']} frames)")
    ax[0].tick_params(axis="x", labelrotation=30)  # "register" and "segment" overlap flat
    ax0b = ax[0].twinx()
    ax0b.plot(names, [st[n]["max_rss_mib"] for n in names], "o-", color="tab:red")
    ax0b.set_ylabel("peak RSS per job (MiB)", color="tab:red")
    reg, lv, bl = r["register_pair"], r["level"], r["baseline"]
    labels = ["FFT floor", "skimage pcc", "ecafm shift", "ecafm pair", "level ecafm", "level TopoStats",
              "baseline frame"]
    vals = [reg["fft_floor_ms"], reg["skimage_ms"], reg["estimate_shift_ms"], reg["estimate_pair_ms"],
            lv["ecafm_ms"], lv["topostats_ms"] or 0.0, bl["per_frame_ms"]]
    colors = ["gray", "tab:orange", "tab:blue", "tab:blue", "tab:green", "tab:orange", "tab:orange"]
    ax[1].barh(labels, vals, color=colors)
    ax[1].set_xscale("log")
    ax[1].set_xlabel("ms (single thread, median)")
    ax[1].set_title(f"side by side at {reg['frame_shape'][0]}^2 px")
    for i, v in enumerate(vals):
        if v:
            ax[1].text(v, i, f" {v:.1f}", va="center", fontsize=8)
    sc = r.get("scaling")
    if sc:
        fr = [sc["N"]["frames"], sc["10N"]["frames"]]
        ax[2].plot(fr, [sc["N"]["total_s"], sc["10N"]["total_s"]], "o-", label="time (s)")
        ax[2].plot(fr, [sc["N"]["total_s"], sc["N"]["total_s"] * fr[1] / fr[0]], "k:", label="linear")
        ax[2].set_xlabel("frames")
        ax[2].set_ylabel("s in process")
        a2 = ax[2].twinx()
        a2.plot(fr, [sc["N"]["max_rss_mib"], sc["10N"]["max_rss_mib"]], "s--", color="tab:red")
        a2.set_ylabel("max RSS per job (MiB)", color="tab:red")
        a2.set_ylim(0, 1100)
        ax[2].legend(loc="upper left")
        ax[2].set_title("N vs 10N frames")
    elif r.get("snakemake"):
        smk = r["snakemake"]
        cs = sorted(c for c in smk if c.isdigit())
        ax[2].bar([f"--cores {c}" for c in cs], [smk[c]["wall_s"] for c in cs])
        ax[2].set_ylabel("snakemake wall s")
    else:  # --skip-snakemake --skip-scaling: say so instead of an empty axis
        ax[2].axis("off")
        ax[2].text(0.5, 0.5, "no Snakemake runs and no N vs 10N runs\n(--skip-snakemake --skip-scaling)",
                   ha="center", va="center", transform=ax[2].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def snakemake_only(args: argparse.Namespace) -> int:
    """Re-run the Snakemake pair on a data set whose in-process results exist, and re-report."""
    data = ensure_data(args.preset, {})
    prev = data["dir"] / "results.json"
    if not prev.exists():
        raise SystemExit(f"{prev} does not exist: run `benchmarks/run.py --preset {args.preset}` first "
                         "(the Snakemake overhead is measured against its in-process stage times)")
    r = json.loads(prev.read_text())
    r["slurm_probe"] = slurm_probe()
    r["snakemake"] = snakemake_pair(data, [1, 2], args.repeats)
    r["overhead"] = snakemake_overhead(r["snakemake"]["1"], r["jobs"])
    r["snakemake_date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    r["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    prev.write_text(json.dumps(r, indent=1, default=str))
    md = report_md(r)
    (data["dir"] / "report.md").write_text(md)
    print(md)
    log(f"wrote {prev} and {data['dir'] / 'report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ecafm performance harness (not a test).")
    ap.add_argument("--preset", default="bench-s", choices=["bench-s", "bench-m", "bench-l"])
    ap.add_argument("--quick", action="store_true",
                    help="2 cycles only, fewer repeats, no TopoStats, no --cores 1 run, no N/10N")
    ap.add_argument("--skip-snakemake", action="store_true", help="in-process stages and ratios only")
    ap.add_argument("--skip-scaling", action="store_true", help="no N vs 10N runs")
    ap.add_argument("--snakemake-only", action="store_true",
                    help="only the Snakemake --cores 1 / --cores 2 pair, added to this preset's earlier results.json")
    ap.add_argument("--repeats", type=int, default=2,
                    help="Snakemake --cores 1 / --cores 2 runs, interleaved; medians reported (default 2)")
    ap.add_argument("--figure", type=Path, default=HERE / "results.png")
    args = ap.parse_args(argv)

    if args.snakemake_only:
        return snakemake_only(args)
    reps = 3 if args.quick else 7
    r: dict = {"preset": args.preset, "quick": args.quick, "machine": machine()}
    data = ensure_data(args.preset, {"n_cycles": 2} if args.quick else {})
    out = data["dir"] / "inproc"
    r["dataset"] = data["name"]
    r["generate_s"] = data["generate_s"]
    log(f"stages in process on {data['name']} (one process per job)")
    jobs = stage_jobs(data, out)
    from ecafm.store import open_cube

    cube = out / "cube.zarr"
    ds = open_cube(cube)
    r["frames"] = int(ds.sizes["frame"])
    r["frame_px"] = int(ds.sizes["x"])
    r["cube_mib"] = cube_mib(cube)
    r["jobs"] = jobs
    r["jobs_summary"] = summarize_jobs(jobs, r["frames"])
    r["accuracy"] = registration_accuracy(out / "transforms.zarr", data["truth"])
    log("side by side: registration per pair, leveling per frame")
    r["register_pair"] = micro_register(out / "level" / "cycle_1.zarr", reps, 3 if args.quick else 6)
    r["level"] = micro_level(cube, 4 if args.quick else 8, reps, topo=not args.quick)
    log("sequential baseline")
    r["baseline"] = baseline(cube, data["truth"], data["dir"])
    r["snakemake"] = {}
    if not args.skip_snakemake:
        r["slurm_probe"] = slurm_probe()
        if r["slurm_probe"].get("scontrol_s", 0) > 2:
            log(f"warning: `scontrol show config` took {r['slurm_probe']['scontrol_s']:.1f} s (SLURM installed, "
                "controller unreachable); the SLURM executor plugin pays it at the start of every snakemake run. "
                "Start the controller (tests/hpc/start_slurm.sh start) or uninstall the plugin for a workstation "
                "measurement.")
        r["snakemake"] = snakemake_pair(data, [2] if args.quick else [1, 2], 1 if args.quick else args.repeats)
        if "1" in r["snakemake"]:
            r["overhead"] = snakemake_overhead(r["snakemake"]["1"], jobs)
    if not (args.quick or args.skip_scaling):
        sc = {}
        for key, ov in zip(("N", "10N"), SCALING[args.preset], strict=True):
            d = ensure_data(args.preset, ov)
            if d["name"] == data["name"]:
                js, n = r["jobs"], r["frames"]
                sub_out = out
            else:
                log(f"scaling run {key}: {d['name']}")
                sub_out = d["dir"] / "inproc"
                js = stage_jobs(d, sub_out)
                n = int(open_cube(sub_out / "cube.zarr").sizes["frame"])
            s = summarize_jobs(js, n)
            sc[key] = {"dataset": d["name"], "frames": n, "total_s": s["total_s"], "ms_per_frame": s["ms_per_frame"],
                       "max_rss_mib": s["max_rss_mib"], "by_stage": s["by_stage"]}
            if key == "10N":
                acc = registration_accuracy(sub_out / "transforms.zarr", d["truth"])
                bl = baseline(sub_out / "cube.zarr", d["truth"], d["dir"])
                r["drift_160"] = {**acc, "baseline_last_frame_error_px": bl["last_frame_error_px"],
                                  "baseline_per_frame_ms": bl["per_frame_ms"],
                                  "baseline_rss_mib": bl["peak_rss_mib"]}
        sc["frame_px"] = r["frame_px"]
        r["scaling"] = sc
    r["help_s"] = help_start()
    r["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res_dir = data["dir"]
    (res_dir / "results.json").write_text(json.dumps(r, indent=1, default=str))
    md = report_md(r)
    (res_dir / "report.md").write_text(md)
    figure(r, args.figure)
    print(md)
    log(f"wrote {res_dir / 'results.json'}, {res_dir / 'report.md'} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
