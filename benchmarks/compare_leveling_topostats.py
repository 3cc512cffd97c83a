"""Agreement of ecafm's leveling with TopoStats' filter on real instrument files (issue 4 note).

Usage: ``python benchmarks/compare_leveling_topostats.py [FILE...]`` (defaults: the Nanoscope,
JPK and Asylum files of ../shared/data/real). Needs ``benchmarks/.venv-topostats``
(``benchmarks/setup_topostats.sh``); TopoStats runs there in a subprocess, never in ecafm.
Compares ecafm ``level_frame(order=2)`` with TopoStats' ``masked_quadratic_removal`` image (masked
row-median alignment, tilt and quadratic removal: the same model) after removing each image's
median: RMS difference relative to the image's RMS, and Pearson correlation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TOPO_PY = HERE / ".venv-topostats" / "bin" / "python"
REAL = HERE.parents[1] / "shared" / "data" / "real"
DEFAULT = ["spm/old_bruker.002", "spm/Veeco_20160622.003", "spm/di-3.di", "jpk/sample_0.jpk",
           "ibw/AR_20211011.ibw"]
TOPO_CODE = """
import sys, json, numpy as np, logging
from topostats.classes import TopoStats
from topostats.filters import Filters
logging.getLogger("topostats").setLevel(logging.ERROR)
img = np.load(sys.argv[1]).astype(float); px = float(sys.argv[2])
obj = TopoStats(image_original=img, filename="f", pixel_to_nm_scaling=px, img_path=".")
f = Filters(obj, remove_scars={"run": False}, row_alignment_quantile=0.5, threshold_method="std_dev",
            otsu_threshold_multiplier=1.0, threshold_std_dev={"below": 10.0, "above": 1.0},
            threshold_absolute={"below": -1.0, "above": 1.0}, gaussian_size=1.0, gaussian_mode="nearest")
f.filter_image()
np.save(sys.argv[3], f.images["masked_quadratic_removal"])
"""


def main(files: list[str]) -> int:
    from ecafm.io.afm import read_frames
    from ecafm.kernels.level import level_frame

    if not TOPO_PY.exists():
        print("benchmarks/.venv-topostats missing: run benchmarks/setup_topostats.sh", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rel in files or DEFAULT:
            path = Path(rel) if Path(rel).exists() else REAL / rel
            fr = read_frames(path)[0]
            raw = Path(tmp) / "raw.npy"
            np.save(raw, fr.height.astype(float))
            out = Path(tmp) / "topo.npy"
            subprocess.run([str(TOPO_PY), "-c", TOPO_CODE, str(raw), str(fr.pixel_size_nm[1]), str(out)],
                           check=True, cwd=tmp, capture_output=True)
            topo = np.load(out)
            ours = level_frame(fr.height, order=2).height.astype(float)
            a, b = ours - np.nanmedian(ours), topo - np.nanmedian(topo)
            ok = np.isfinite(a) & np.isfinite(b)
            rms = float(np.sqrt(np.mean(b[ok] ** 2)))
            diff = float(np.sqrt(np.mean((a[ok] - b[ok]) ** 2)))
            rows.append({"file": str(rel), "shape": list(fr.shape), "image_rms_nm": rms, "rms_difference_nm": diff,
                         "relative_difference": diff / rms, "pearson_r": float(np.corrcoef(a[ok], b[ok])[0, 1])})
            print(json.dumps(rows[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
