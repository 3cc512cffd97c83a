"""How far can a site partition of the plating peak go on the generator's truth? (issue 5)

The site F1 target (>= 0.9 at IoU >= 0.5) is scored against the generator's ``site_label``: each
deposit pixel belongs to the site whose own cap is the thickest there (caps add up where their
footprints overlap). This script takes the pipeline's measurement noise, drift, tip and
registration out of the question and asks what each partition rule reaches on the NOISE-FREE
true height at every cycle's plating peak, inside the true deposit footprint:

- ``watershed_hmax``: the pipeline's rule (``ecafm.kernels.sites.segment_sites``: h-maxima
  markers with the configured dynamic, marker watershed of the height);
- ``watershed_true_centres``: the same watershed with one marker at every true site centre
  (perfect detection);
- ``caps_true_centres``: the true centres, each given a paraboloid cap of free height and radius
  (non-negative least squares over a dictionary of radii, per connected footprint), and every
  pixel given to the site whose fitted cap is the thickest there: the truth's own rule with
  fitted caps;
- ``caps_hmax``: that cap fit at the centres of the ``watershed_hmax`` markers;
- ``caps_growth``: that cap fit at centres tracked through the plating, as the pipeline's
  ``site_markers: growth`` does: the h-maxima of every plating frame's height, each kept when
  it lies at least 2 px from every centre found in an earlier frame.
- ``caps_free``: caps started at the h-maxima and then fitted with FREE centres, radii and
  heights, all caps of a footprint at once (``scipy.optimize.least_squares``), with the
  generator's own prior on the cap shape (height = aspect x radius, aspect within ~10%); caps
  below 5 nm or within 1 px of a larger one dropped; each pixel to the thickest cap. This is the
  best a detector that knows the generator's cap model can do from the maxima it sees.
- ``caps_free_growth``: the same free fit started at the ``caps_growth`` centres.

Not a test and not a pipeline stage: the cap fits are written here (scipy.optimize.nnls and
least_squares) only to measure the ceiling. Usage (ecafm's venv, repository root)::

    python benchmarks/site_partition_ceiling.py --preset demo --seeds 0 1 60 [--out F.json]

About 20 s (null) to 80-270 s (demo) per seed, mostly the free cap fits; no pipeline run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

RADII_PX = np.arange(1.5, 12.01, 0.5)
DEPOSIT = (1, 2, 3)
RULES = ("watershed_hmax", "watershed_true_centres", "caps_true_centres", "caps_hmax", "caps_growth",
         "caps_free", "caps_free_growth")  # DEPOSIT: class_map codes active, dormant, dead Li


def cap_partition(h: np.ndarray, mask: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                  radii: np.ndarray = RADII_PX) -> np.ndarray:
    """Label map 1..len(cy): the thickest fitted paraboloid cap per pixel of ``mask``.

    Per connected component of ``mask`` (dilated by 2 px so the fit sees the caps' edges), the
    height is fitted as a non-negative sum of ``max(0, 1 - d^2 / r^2)`` over the component's
    centres and ``radii``; a centre's cap is the sum of its columns.
    """
    from scipy.optimize import nnls

    out = np.zeros(h.shape, np.int32)
    comp, nc = ndi.label(mask)
    yy, xx = np.mgrid[: h.shape[0], : h.shape[1]]
    iy = np.clip(np.round(cy).astype(int), 0, h.shape[0] - 1)
    ix = np.clip(np.round(cx).astype(int), 0, h.shape[1] - 1)
    owner = comp[iy, ix]
    for c in range(1, nc + 1):
        sel = np.flatnonzero(owner == c)
        pix = comp == c
        if sel.size <= 1:
            out[pix] = sel[0] + 1 if sel.size else 0
            continue
        reg = ndi.binary_dilation(pix, iterations=2)

        def columns(py: np.ndarray, px: np.ndarray, sel: np.ndarray = sel) -> np.ndarray:
            d2 = (py[None, :] - cy[sel, None]) ** 2 + (px[None, :] - cx[sel, None]) ** 2
            return np.clip(1.0 - d2[:, None, :] / radii[None, :, None] ** 2, 0.0, None)

        a = columns(yy[reg], xx[reg])  # (centre, radius, pixel)
        coef, _ = nnls(a.reshape(-1, a.shape[-1]).T, h[reg], maxiter=20 * a.shape[0] * a.shape[1])
        caps = np.einsum("kr,krp->kp", coef.reshape(sel.size, radii.size), columns(yy[pix], xx[pix]))
        lab = sel[np.argmax(caps, 0)] + 1
        out[yy[pix], xx[pix]] = np.where(caps.max(0) > 0, lab, 0)
    return out


def _caps(p: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Per cap (rows of p = centre y, centre x, radius, height) its paraboloid at (yy, xx)."""
    cy, cx, r, hh = (p[:, k, None] for k in range(4))
    return hh * np.clip(1.0 - ((yy[None] - cy) ** 2 + (xx[None] - cx) ** 2) / np.maximum(r, 0.3) ** 2,
                        0.0, None)


def free_cap_partition(h: np.ndarray, mask: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                       px_nm: float, aspect: float, aspect_sd: float, min_r: float) -> np.ndarray:
    """Label map: caps started at (cy, cx), fitted with free centres, radii and heights.

    Per connected component of ``mask`` (dilated by 2 px), all its caps are fitted at once by
    least squares with a soft prior height = aspect * radius (sd ``aspect_sd``; the generator
    clamps radii at ``min_r`` px and lowers such caps, so they are exempt). Caps under 5 nm and
    caps within 1 px of a larger one are dropped; every pixel goes to the thickest cap.
    """
    from scipy.optimize import least_squares
    from scipy.sparse import lil_matrix

    out = np.zeros(h.shape, np.int32)
    comp, nc = ndi.label(ndi.binary_dilation(mask, iterations=2))
    iy = np.clip(np.round(cy).astype(int), 0, h.shape[0] - 1)
    ix = np.clip(np.round(cx).astype(int), 0, h.shape[1] - 1)
    owner = comp[iy, ix]
    kept = []
    for c in range(1, nc + 1):
        sel = np.flatnonzero(owner == c)
        if not sel.size:
            continue
        yy, xx = (v.astype(float) for v in np.nonzero(comp == c))
        z = h[comp == c]
        r0 = 3.0
        p0 = np.column_stack([cy[sel], cx[sel], np.full(sel.size, r0), np.full(sel.size, aspect * r0 * px_nm)])
        sparsity = lil_matrix((z.size + sel.size, 4 * sel.size), dtype=np.int8)
        for a, (y, x) in enumerate(p0[:, :2]):
            near = np.flatnonzero((yy - y) ** 2 + (xx - x) ** 2 <= 15.0 ** 2)
            sparsity[near[:, None], 4 * a + np.arange(4)] = 1
            sparsity[z.size + a, 4 * a + 2: 4 * a + 4] = 1

        def resid(p: np.ndarray, yy: np.ndarray = yy, xx: np.ndarray = xx, z: np.ndarray = z) -> np.ndarray:
            q = p.reshape(-1, 4)
            prior_h = aspect * q[:, 2] * px_nm
            prior = np.where(q[:, 2] > min_r + 0.1, 5.0 * (q[:, 3] - prior_h) / (aspect_sd / aspect * prior_h), 0.0)
            return np.concatenate([_caps(q, yy, xx).sum(0) - z, prior])

        lo = np.tile([-np.inf, -np.inf, 0.8, 0.0], sel.size)
        hi = np.tile([np.inf, np.inf, 20.0, np.inf], sel.size)
        fit = least_squares(resid, p0.ravel(), jac_sparsity=sparsity, bounds=(lo, hi), max_nfev=60,
                            x_scale="jac").x.reshape(-1, 4)
        for q in sorted(fit[fit[:, 3] > 5.0], key=lambda q: -q[3] * q[2] ** 2):
            if all((q[0] - k[0]) ** 2 + (q[1] - k[1]) ** 2 >= 1.0 for k in kept):
                kept.append(q)
    if kept:
        yy, xx = np.nonzero(mask)
        caps = _caps(np.array(kept), yy.astype(float), xx.astype(float))
        out[yy, xx] = np.where(caps.max(0) > 0, np.argmax(caps, 0) + 1, 0)
    return out


def f1_counts(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(matched, true sites, predicted sites) at IoU >= 0.5, the score's matching."""
    from ecafm.score import _match_sites

    return (len(_match_sites(truth, pred, 0.5)), np.unique(truth[truth > 0]).size,
            np.unique(pred[pred > 0]).size)


def one_seed(preset: str, seed: int, work: Path, marker_h: float) -> dict:
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    from ecafm.kernels.sites import segment_sites
    from ecafm.score import _nearest_site_px
    from ecafm.store import open_cube
    from ecafm.synth import synth
    from ecafm.synth.presets import resolve_params

    synth(preset, seed, work / f"{preset}_{seed}")
    prm = resolve_params(preset)
    t = open_cube(work / f"{preset}_{seed}" / "truth.zarr").load()
    px_nm = float(t.attrs["pixel_size_nm"])
    phase, cycle = t["phase"].values, t["cycle"].values
    ref = int(np.flatnonzero(phase == 1)[0]) - 1  # last frame before the first plating
    h0 = t["height_true"][ref].values.astype(np.float64)
    rules = RULES
    tot = {r: np.zeros(3, int) for r in rules}
    per_cycle = []
    spacing = {"nn_lt_2px": 0, "nn_lt_3px": 0}
    for c in np.unique(cycle[phase == 1]):
        f = int(np.flatnonzero((phase == 1) & (cycle == c))[-1])
        lab = np.where(np.isin(t["class_map"][f].values, DEPOSIT), t["site_label"][f].values, 0)
        mask = lab > 0
        h = t["height_true"][f].values.astype(np.float64) - h0
        ids = np.unique(lab[mask])
        cy, cx = t["site_y_px"].values[ids - 1], t["site_x_px"].values[ids - 1]
        iy, ix = np.round(cy).astype(int), np.round(cx).astype(int)
        inside = (iy >= 0) & (iy < h.shape[0]) & (ix >= 0) & (ix < h.shape[1])
        mk = np.zeros(h.shape, np.int32)
        mk[iy[inside], ix[inside]] = ids[inside]
        mk[~mask] = 0
        pk, npk = ndi.label(h_maxima(np.where(mask, h, 0.0), marker_h).astype(bool) & mask,
                            structure=np.ones((3, 3)))
        py, px = (np.array(ndi.center_of_mass(pk > 0, pk, range(1, npk + 1))).reshape(-1, 2).T
                  if npk else (np.zeros(0), np.zeros(0)))
        # centres tracked through the plating: maxima of each frame's height, kept when new
        gy, gx = [], []
        for g in np.flatnonzero((phase == 1) & (cycle == c)):
            hg = np.where(mask, t["height_true"][g].values - h0, 0.0)
            lg, ng = ndi.label(h_maxima(hg, marker_h).astype(bool) & mask, structure=np.ones((3, 3)))
            for y, x in np.array(ndi.center_of_mass(lg > 0, lg, range(1, ng + 1))).reshape(-1, 2):
                if all((y - a) ** 2 + (x - b) ** 2 >= 4.0 for a, b in zip(gy, gx, strict=True)):
                    gy.append(y)
                    gx.append(x)
        pred = {
            "watershed_hmax": segment_sites(h, mask, marker_h=marker_h, min_distance=2, min_area=1,
                                            smooth_px=0.0),
            "watershed_true_centres": watershed(-h, markers=mk, mask=mask),
            "caps_true_centres": cap_partition(h, mask, cy, cx),
            "caps_hmax": cap_partition(h, mask, py, px),
            "caps_growth": cap_partition(h, mask, np.array(gy), np.array(gx)),
            "caps_free": free_cap_partition(h, mask, py, px, px_nm, prm.aspect_mean, prm.aspect_sd,
                                            prm.min_radius_px),
            "caps_free_growth": free_cap_partition(h, mask, np.array(gy), np.array(gx), px_nm,
                                                   prm.aspect_mean, prm.aspect_sd, prm.min_radius_px),
        }
        # spacing: distance from each true site's centre to the nearest other one (px)
        nn = _nearest_site_px(t, f, ids)
        for k in (2, 3):
            spacing[f"nn_lt_{k}px"] += int((nn < k).sum())
        row = {"cycle": int(c), "frame": f}
        for r in rules:
            n = np.array(f1_counts(lab, pred[r]))
            tot[r] += n
            row[r] = 2 * n[0] / (n[1] + n[2])
        per_cycle.append(row)
    out = {"preset": preset, "seed": seed, "per_cycle": per_cycle, **spacing}
    for r in rules:
        m, nt, npred = tot[r]
        out[r] = {"f1": 2 * m / (nt + npred), "matched": int(m), "true": int(nt), "pred": int(npred)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--marker-h", type=float, default=2.0, help="h-maxima dynamic (nm), as segment.marker_h_nm")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the per-seed results")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ecafm_ceiling_") as tmp:
        for s in a.seeds:
            t0 = time.perf_counter()
            r = one_seed(a.preset, s, Path(tmp), a.marker_h)
            rows.append(r)
            cells = "  ".join(f"{k} {r[k]['f1']:.3f} ({r[k]['matched']}/{r[k]['true']} true, {r[k]['pred']} pred)"
                              for k in RULES)
            print(f"{a.preset} seed {s} [{time.perf_counter() - t0:.0f} s]: {cells}; true sites with a "
                  f"neighbour centre < 2 px: {r['nn_lt_2px']}, < 3 px: {r['nn_lt_3px']}", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
