"""Time TopoStats' filter (Filters.filter_image) per frame; runs in benchmarks/.venv-topostats only.

Usage: ``benchmarks/.venv-topostats/bin/python benchmarks/topostats_filter.py FRAMES.npy
PIXEL_NM REPS OUT.json``. Uses TopoStats' default filter configuration (row alignment, tilt,
quadratic and nonlinear polynomial removal, thresholded second pass, Gaussian), scar removal off.
Not imported by ecafm.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from importlib.metadata import version

import numpy as np


def main(argv: list[str]) -> int:
    from topostats.classes import TopoStats
    from topostats.filters import Filters

    logging.getLogger("topostats").setLevel(logging.ERROR)
    frames = np.load(argv[0]).astype(np.float64)
    px, reps = float(argv[1]), int(argv[2])
    cfg = dict(row_alignment_quantile=0.5, threshold_method="std_dev", otsu_threshold_multiplier=1.0,
               threshold_std_dev={"below": 10.0, "above": 1.0},
               threshold_absolute={"below": -1.0, "above": 1.0}, gaussian_size=1.0121397464510862,
               gaussian_mode="nearest")
    times = []
    for f in frames:
        per = []
        for _ in range(reps + 1):
            obj = TopoStats(image_original=f.copy(), filename="frame", pixel_to_nm_scaling=px, img_path=".")
            flt = Filters(obj, remove_scars={"run": False}, **cfg)
            t = time.perf_counter()
            flt.filter_image()
            per.append(time.perf_counter() - t)
        times.append(statistics.median(per[1:]))
    out = {"version": version("topostats"), "ms_median": 1e3 * statistics.median(times), "frames": len(times)}
    with open(argv[3], "w") as fh:
        json.dump(out, fh)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
