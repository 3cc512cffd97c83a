"""Registration per frame pair: ``register.method`` fast vs robust vs the FFT floor (issue 9).

Run from the repository root with ecafm's venv::

    python benchmarks/registration_fast.py            # 256^2 (bench-s) and 512^2 (bench-m)
    python benchmarks/registration_fast.py --sizes 256

Generates one cycle of ``bench-s`` / ``bench-m`` (seed 0) under ``benchmarks/data/fastreg/``
(gitignored; reused when present), levels it, and times on its consecutive leveled frames, in
one process and 1 thread:

- FFT floor: ``rfft2`` of both frames + ``irfft2`` of the cross-power (scipy.fft, float32);
- fast: per pair, the spectra of the new frame (:func:`ecafm.kernels.register.fast_spectra`,
  computed once per frame in the stage) plus :func:`ecafm.kernels.register.estimate_fast`;
- robust: :func:`ecafm.register.estimate_pair` (the default method).

Also counted: pairs each method flags (QC). A flagged fast pair skips its row drift, so its time
is not a time at the registration issue's accuracy; on bench-m most fast pairs are flagged
``weak_peak`` (README, ``register.method``).

Medians over pairs of the median of repeated calls. Numbers are printed, never asserted.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "fastreg"
PRESET = {256: "bench-s", 512: "bench-m"}


def median_time(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def leveled_frames(size: int) -> np.ndarray:
    from ecafm.ingest import ingest
    from ecafm.level import LevelParams, level_cycle
    from ecafm.store import Step, open_cube

    root = DATA / PRESET[size]
    lev = root / "level_cycle_0.zarr"
    if not lev.exists():
        from ecafm.synth import synth

        synth(PRESET[size], 0, root / "data", overrides={"n_cycles": 1})
        ingest([root / "data" / "raw"], root / "cube.zarr", ec_log=root / "data" / "ec" / "log.mpt",
               frame_sheet=root / "data" / "frames.tsv")
        level_cycle(root / "cube.zarr", 0, lev, params=LevelParams(), step=Step("level_cycle", {}, {"cycle": "0"}))
    ds = open_cube(lev)
    return ds["height"].values[ds["frame_ok"].values].astype(np.float32)


def bench(size: int, n_pairs: int, reps: int) -> dict:
    import scipy.fft as sfft

    from ecafm.kernels.register import estimate_fast, fast_spectra
    from ecafm.register import RegisterParams, _fill, estimate_pair

    h = leveled_frames(size)
    pairs = [(h[i], h[i + 1]) for i in range(min(n_pairs, len(h) - 1))]
    robust, fast = RegisterParams(), RegisterParams(method="fast")
    a0, b0 = pairs[0]

    def floor(a=a0, b=b0):
        fa = sfft.rfft2(a, workers=1)
        fb = sfft.rfft2(b, workers=1)
        sfft.irfft2(fb * fa.conj(), s=a.shape, workers=1)

    out = {"size": size, "pairs": len(pairs), "floor_ms": 1e3 * median_time(floor, reps * 10)}
    spec, est, rob = [], [], []
    out["fast_flagged"] = out["robust_flagged"] = 0
    for a, b in pairs:
        sa = fast_spectra(_fill(a), strip_height=fast.strip_height)
        sb = fast_spectra(_fill(b), strip_height=fast.strip_height)
        spec.append(median_time(lambda b=b: fast_spectra(_fill(b), strip_height=fast.strip_height), reps))
        est.append(median_time(lambda sa=sa, sb=sb: estimate_fast(
            sa, sb, min_peak_ratio=fast.min_peak_ratio, max_disagreement_px=fast.max_disagreement_px), reps))
        rob.append(median_time(lambda a=a, b=b: estimate_pair(a, b, params=robust), max(1, reps // 10)))
        s, _ = estimate_fast(sa, sb, min_peak_ratio=fast.min_peak_ratio, max_disagreement_px=fast.max_disagreement_px)
        out["fast_flagged"] += not s.ok
        out["robust_flagged"] += not estimate_pair(a, b, params=robust).ok
    out["fast_spectra_ms"] = 1e3 * statistics.median(spec)
    out["fast_estimate_ms"] = 1e3 * statistics.median(est)
    out["fast_ms"] = out["fast_spectra_ms"] + out["fast_estimate_ms"]
    out["robust_ms"] = 1e3 * statistics.median(rob)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], choices=sorted(PRESET))
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print("| frames | FFT floor | fast (spectra + estimate) | x floor | fast flagged | robust estimate_pair | x floor |"
          " robust flagged |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = bench(size, args.pairs, args.reps)
        fl = r["floor_ms"]
        print(f"| {size}^2, {PRESET[size]} cycle 0 ({r['pairs']} pairs) | {fl:.3f} ms | "
              f"{r['fast_ms']:.2f} ms ({r['fast_spectra_ms']:.2f} + {r['fast_estimate_ms']:.2f}) | "
              f"{r['fast_ms'] / fl:.1f}x | {r['fast_flagged']} | {r['robust_ms']:.1f} ms | {r['robust_ms'] / fl:.0f}x | "
              f"{r['robust_flagged']} |", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
