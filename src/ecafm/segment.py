"""Stage ``segment``: change labels and state classes per cycle (one Snakemake job per cycle).

Inputs of the job of cycle c (all registered cubes on the common field of view):

- cycle 0: the reference ``h_ref`` = leveled, registered height of the last usable frame before
  the first plating;
- cycle c-1 (c >= 1): change labels across the cycle boundary and of the previous stripping
  half-cycle ("GROW or SHRINK in this or the previous half-cycle");
- cycle c;
- cycle c+1 if it exists: its plating half-cycle decides the residue rule for the stripping
  frames of cycle c. For the last cycle the rule is undecidable: those pixels stay
  DORMANT_DEPOSIT and ``residue_decided`` is false for the frames concerned;
- ``transforms.zarr``: per-frame registration uncertainty ``error_px`` (sigma_r).

The residue rule (``docs/SCIENCE.md``), as implemented: a pixel above the reference (by more
than ``tau_ref + film_nm``, significantly above the thickest SEI film; site footprints, which
volumes are summed over, use ``max(tau_ref, film_nm)``) is INACTIVE_RESIDUE in a frame when it stays STATIC from that
frame through the rest of the stripping half-cycle and the whole next plating half-cycle (in a
plating frame of cycle c: STATIC through the whole plating of cycle c, which is the "next
plating" of the stripping of cycle c-1). With the site-level rule (``residue_retention`` > 0,
the default, :func:`_site_residue`) a site that converts in a stripping is ACTIVE_DEPOSIT in
all of that stripping's frames (it shrinks through it) and residue from the next plating on;
``state_end`` carries the residue left at the trough, which volumes are taken of.

End states: the rows of a frame are scanned one after another, so the last frame of a
half-cycle misses part of it. ``h_peak`` (end of plating) and ``h_trough`` (end of stripping)
are extrapolated from the last two frames of the half-cycle, linearly in the charge at which
each row was scanned (:func:`ecafm.kernels.change.rectify_rows`); every other frame is
rectified the same way to the charge at its end, between its neighbours of the same half-cycle. Volumes are sums of
height differences times the pixel area (nm^3) and, via the metal's charge per nm^3, in C.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ecafm.blas import one_blas_thread
from ecafm.errors import InputFileError
from ecafm.kernels import change as kc

log = logging.getLogger(__name__)

PRE, PLATE, STRIP = 0, 1, 2
KIND_MEANINGS = "pre_plating plate strip"
#: a trough site that kept more than this fraction of its peak volume was not stripped at all
_IDLE_KEEP = 0.95


@dataclass(frozen=True)
class SegmentParams:
    """Config key ``segment`` (see workflow/schemas/config.schema.yaml)."""

    k: float = 3.0
    k_low: float = 1.5
    min_area_px: int = 4
    tip_radius_nm: float = 10.0
    tip_deconvolution: bool = True
    film_nm: float = 4.0
    pit_radius_px: int = 0
    creep_rows: int = 0
    marker_h_nm: float = 2.0
    marker_min_distance_px: int = 2
    marker_smooth_px: float = 0.0
    site_markers: str = "layers"
    neck_dynamic_px: float = 0.5
    min_overlap: float = 0.2
    tile_px: int = 16
    detection_k: float = 3.0
    dead_fraction: float = 0.4
    void_fraction: float = 0.2
    residue_vote: float = 0.5
    residue_retention: float = 0.35
    residue_lookback: int = 1

    def __post_init__(self):
        if isinstance(self.residue_lookback, bool) or self.residue_lookback not in (0, 1):
            raise ValueError(f"segment.residue_lookback must be 0 or 1, got {self.residue_lookback!r}")

    @property
    def erosion_tip_nm(self) -> float:
        """Tip radius the frames are eroded with: ``tip_radius_nm``, or 0 without deconvolution."""
        return self.tip_radius_nm if self.tip_deconvolution else 0.0

    def min_area(self, pixel_nm: float) -> int:
        """Minimum changed area (px): config value, at least the tip footprint."""
        tip = int(np.ceil(np.pi * (self.tip_radius_nm / pixel_nm) ** 2))
        return max(int(self.min_area_px), tip, 1)


@dataclass
class _Frames:
    h: np.ndarray  #: (n, ny, nx) float64, aligned to the reference datum
    valid: np.ndarray  #: (n, ny, nx) bool
    usable: np.ndarray  #: (n,) bool
    kind: np.ndarray  #: (n,) int
    frame: np.ndarray
    time: np.ndarray
    line_time: np.ndarray
    charge: np.ndarray
    sigma_r: np.ndarray  #: (n,) px
    rows: np.ndarray  #: (n, ny) raw scan line shown by each registered row (drift included)
    q_rows: np.ndarray  #: (n, ny) charge from the log when each registered row was scanned, or NaN
    q_end: np.ndarray  #: (n,) charge from the log at the end of the frame, or NaN


def _kinds(ds: xr.Dataset, first_plate_frame: int) -> np.ndarray:
    hc = ds["half_cycle"].values
    fr = ds["frame"].values
    kind = np.where(hc % 2 == 1, STRIP, PLATE)
    return np.where(fr < first_plate_frame, PRE, kind).astype(np.int8)


def no_plating_advice(ec_log: str = "", positive_current_plates: bool | None = None) -> str:
    """What to do about a data set without a plating frame: without a log, give one (or phases);
    with a log, its sign convention or the frames' clock is the suspect."""
    if not ec_log:
        return ("Without a potentiostat log every frame's phase is unknown: give the data set an `ec_log`, "
                "or a frame sheet with a `phase` or `half_cycle` column")
    sign = "" if positive_current_plates is None else f" (now {positive_current_plates})"
    return (f"Its log {ec_log} plates nothing while the frames were taken: check `positive_current_plates`{sign} "
            "and the frame times (`clock_offset_s`); `ecafm inspect LOG` shows where the log's first plating is")


NO_PLATING_HINT = no_plating_advice()


def first_plating_frame(cycle0: xr.Dataset) -> int:
    """Frame number of the first plating frame (phase code 1) of the dataset."""
    ph = cycle0["phase"].values
    idx = np.flatnonzero(ph == 1)
    if idx.size == 0:
        raise ValueError(f"no plating frame (phase 1) in the first cycle: cannot choose h_ref. {NO_PLATING_HINT}")
    return int(cycle0["frame"].values[idx[0]])


def _reference_index(cycle0: xr.Dataset) -> int:
    """Index (in ``cycle0``) of h_ref: the last usable frame before the first plating (else the
    first usable frame). ``cycle0`` needs the coordinates ``frame``, ``phase``, ``frame_ok`` and
    ``registration_ok``."""
    fp = first_plating_frame(cycle0)
    usable = cycle0["frame_ok"].values & cycle0["registration_ok"].values
    fr = cycle0["frame"].values
    cand = np.flatnonzero(usable & (fr < fp))
    if cand.size == 0:
        cand = np.flatnonzero(usable)
        if cand.size == 0:
            raise ValueError("no usable frame in the first cycle: cannot choose h_ref")
        log.warning("no usable frame before the first plating; h_ref = frame %d", int(fr[cand[0]]))
        cand = cand[:1]
    return int(cand[-1])


def reference_height(cycle0: xr.Dataset, tip_radius_nm: float = 0.0) -> tuple[np.ndarray, int]:
    """h_ref: the last usable frame before the first plating (else the first usable frame)."""
    i = _reference_index(cycle0)
    return (_tip(cycle0["height"][i].values.astype(np.float64), cycle0, tip_radius_nm),
            int(cycle0["frame"].values[i]))


def _tip(h: np.ndarray, ds: xr.Dataset, tip_radius_nm: float) -> np.ndarray:
    """Frame with the tip's dilation undone (:func:`ecafm.kernels.change.tip_erode`); 0 = as is."""
    if not tip_radius_nm > 0:
        return h
    px = float(np.asarray(ds.attrs["pixel_size_nm"], float).ravel()[0])
    return kc.tip_erode(h, tip_radius_nm, px)


#: registered-cube variable: every frame tip-eroded and aligned to h_ref (see :func:`add_aligned`)
ALIGNED = "height_aligned"


def _aligned_matches(ds: xr.Dataset, ref_frame: int | None, tip_radius_nm: float) -> bool:
    if ALIGNED not in ds or ref_frame is None:
        return False
    a = ds[ALIGNED].attrs
    return (int(a.get("reference_frame", -1)) == int(ref_frame)
            and float(a.get("tip_radius_nm", -1.0)) == float(tip_radius_nm))


def add_aligned(reg: xr.Dataset, first_leveled: xr.Dataset, transforms: xr.Dataset, *, order: int,
                tip_radius_nm: float) -> xr.Dataset:
    """``reg`` (one registered cycle, lazy) with ``height_aligned``: each frame tip-eroded
    (``tip_radius_nm``; 0 = none) and aligned to h_ref (:func:`ecafm.kernels.change.align_to_reference`).

    The segment job of cycle c reads cycles c-2 .. c+1, and aligned every frame it read: 42
    alignments per bench-m job for 16 frames of its own, 2.4 s of its 10 s. Done here, each
    frame is aligned once. h_ref is resampled from the first cycle's leveled cube with the same
    function as that cycle's own registered cube, so it is the h_ref the segment job computes
    (it checks the reference frame and tip radius recorded here, and aligns itself otherwise).
    """
    from ecafm.register import _apply_one

    rect = tuple(int(v) for v in transforms.attrs["common_field_px"])
    t0 = transforms.sel(frame=first_leveled["frame"].values)
    lev0 = first_leveled.assign_coords(registration_ok=("frame", t0["ok"].values.astype(bool)))
    try:
        i = _reference_index(lev0)
    except ValueError as exc:  # e.g. a movie without potentiostat phases: nothing to segment
        log.warning("no aligned heights stored (%s); the segment stage would align them itself", exc)
        return reg
    h0, _ = _apply_one(lev0["height"][i].values, t0["shift_y"][i].values, t0["shift_x"][i].values,
                       rect=rect, order=int(order))
    h_ref = _tip(h0.astype(np.float64), lev0, tip_radius_nm)

    def one(h: np.ndarray) -> np.ndarray:
        return kc.align_to_reference(_tip(h.astype(np.float64), lev0, tip_radius_nm), h_ref).astype(np.float32)

    al = xr.apply_ufunc(one, reg["height"], input_core_dims=[["y", "x"]], output_core_dims=[["y", "x"]],
                        vectorize=True, dask="parallelized", output_dtypes=[np.float32])
    al.attrs = {"units": "nm", "long_name": "registered height, tip-eroded, aligned to h_ref",
                "reference_frame": int(lev0["frame"].values[i]), "tip_radius_nm": float(tip_radius_nm)}
    return reg.assign({ALIGNED: al})


def _load(ds: xr.Dataset, tf: xr.Dataset, h_ref: np.ndarray, fp: int, tip_radius_nm: float = 0.0,
          ref_frame: int | None = None) -> _Frames:
    """The frames of ``ds`` as :class:`_Frames`, each aligned to ``h_ref`` (frame ``ref_frame``):
    read from ``height_aligned`` when apply_registration stored it for the same reference and
    tip radius, else aligned here."""
    if _aligned_matches(ds, ref_frame, tip_radius_nm):  # aligned once, by apply_registration
        ds = ds.drop_vars("height").load()
        h = ds[ALIGNED].values.astype(np.float64)
    else:
        ds = ds.drop_vars(ALIGNED, errors="ignore").load()
        h = ds["height"].values.astype(np.float64)
        for i in range(h.shape[0]):  # common height datum and tilt: stable pixels at the reference
            h[i] = kc.align_to_reference(_tip(h[i], ds, tip_radius_nm), h_ref)
    err = tf["error_px"].sel(frame=ds["frame"].values).values.astype(np.float64)
    # Registered row r shows raw scan line r + shift_y(r) (the drift moved it there): that line's
    # scan time, not r's, says how much charge had passed when it was imaged.
    n, ny = h.shape[:2]
    y0 = int(tf.attrs["common_field_px"][0])
    ref_rows = y0 + np.arange(ny)
    sy = tf["shift_y"].sel(frame=ds["frame"].values).values[:, ref_rows]
    rows = ref_rows[None, :] + np.nan_to_num(sy)
    q_rows = np.full((n, ny), np.nan)
    q_end = np.full(n, np.nan)
    if "row_charge" in ds.coords and "charge_end" in ds.coords:  # absent in cubes ingested before them
        rc = ds["row_charge"].values
        q_end = ds["charge_end"].values.astype(np.float64)
        for i in range(n):
            if np.isfinite(rc[i]).all():
                q_rows[i] = np.interp(rows[i], np.arange(rc.shape[1]), rc[i])
    return _Frames(h=h, valid=ds["valid"].values.astype(bool),
                   usable=(ds["frame_ok"].values & ds["registration_ok"].values).astype(bool),
                   kind=_kinds(ds, fp), frame=ds["frame"].values, time=ds["time"].values,
                   line_time=ds["line_time"].values, charge=ds["charge"].values,
                   sigma_r=np.nan_to_num(err, nan=1.0), rows=rows, q_rows=q_rows, q_end=q_end)


def _concat(parts: list[_Frames]) -> _Frames:
    return _Frames(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in _Frames.__dataclass_fields__))


def _change_pass(allf: _Frames, params: SegmentParams, min_area: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Change labels of every usable frame against the previous usable one (each frame's
    :func:`~ecafm.kernels.change.slope_px` computed once: it is in two pairs)."""
    n_all, ny, nx = allf.h.shape
    chg = np.zeros((n_all, ny, nx), np.int8)
    sig_d = np.full(n_all, np.nan)
    last, g_last = -1, None
    for i in range(n_all):
        if not allf.usable[i]:
            continue
        g = kc.slope_px(allf.h[i])
        if last >= 0:
            sr = float(np.hypot(allf.sigma_r[i], allf.sigma_r[last]))
            valid = allf.valid[i] & allf.valid[last]
            chg[i], sig_d[i] = kc.change_labels(allf.h[last], allf.h[i], sigma_r=sr, k=params.k,
                                                k_low=params.k_low, min_area=min_area,
                                                valid=valid, slopes=(g_last, g))
        last, g_last = i, g
    return chg, sig_d


def _rectify(allf: _Frames, run: np.ndarray, moved: np.ndarray, n_rows: int,
             h_ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every frame brought to the charge at its end; returns the heights and each run's end charge.

    The lines of a frame are scanned one after another while material comes and goes with the
    charge passed. Each registered row is interpolated (the last frame of a half-cycle:
    extrapolated) towards the same row of the neighbouring frame of its half-cycle, in charge.
    The charge of each row is the log's charge when the raw line shown there (drift included)
    was scanned, and the target is the log's charge at the frame's end (``row_charge`` and
    ``charge_end`` of the cube): cut-offs and rests are followed as they happened. Cubes
    without them (no log) fall back to a constant-current model: row charge linear in time
    from the half-cycle's first two frames, clipped to the half-cycle's end charge (last frame's
    mid charge plus half a frame of current; for a stripping followed by a plating, at least
    the plating's first mid charge minus half a frame of its current).
    """
    h = allf.h.copy()
    n_runs = int(run.max()) + 1
    info = []
    for r in range(n_runs):
        idx = np.flatnonzero((run == r) & allf.usable)
        kind = int(allf.kind[run == r][0])
        if idx.size == 0:
            info.append((idx, kind, 0.0, float("nan"), float("nan")))
            continue
        lt = allf.line_time[idx]
        mid = allf.time[idx] + 0.5 * n_rows * lt
        cur = (float((allf.charge[idx[1]] - allf.charge[idx[0]]) / (mid[1] - mid[0]))
               if idx.size > 1 and mid[1] > mid[0] else 0.0)
        end = float(allf.charge[idx[-1]] + cur * 0.5 * n_rows * lt[-1])
        info.append((idx, kind, cur, end, float(mid[0])))
    run_end = np.array([i[3] for i in info])
    for r in range(n_runs - 1):
        idx, kind, cur, end, _ = info[r]
        nidx, nkind, ncur, _, _ = info[r + 1]
        if kind == STRIP and nkind == PLATE and nidx.size and idx.size:
            ip = ncur or next((i[2] for i in info if i[1] == PLATE and i[2]), 0.0)
            q_next = float(allf.charge[nidx[0]] - ip * 0.5 * n_rows * allf.line_time[nidx[0]])
            run_end[r] = max(end, q_next)
    for r in range(n_runs):
        idx, kind, cur, _, mid0 = info[r]
        if kind == PRE or idx.size < 2:
            continue
        logged = bool(np.isfinite(allf.q_rows[idx]).all() and np.isfinite(allf.q_end[idx]).all())
        if logged:
            run_end[r] = float(allf.q_end[idx[-1]])
        elif cur == 0:
            continue
        end = run_end[r]
        q0 = float(allf.charge[idx[0]])
        lim = np.minimum if kind == PLATE else np.maximum

        def q_of(t, q0=q0, cur=cur, mid0=mid0, end=end, lim=lim):
            return lim(q0 + cur * (t - mid0), end)

        # a frame's worth of charge: steps much smaller than this are rests, not growth
        q_frame = float(np.nanmax(np.abs(np.diff(allf.q_end[idx])))) if logged else abs(cur) * n_rows \
            * float(np.nanmedian(allf.line_time[idx]))
        for k, i in enumerate(idx):
            last = k == idx.size - 1
            o = idx[k - 1] if last else idx[k + 1]
            if logged:
                q_rows, q_o, target = allf.q_rows[i], allf.q_rows[o], float(allf.q_end[i])
            else:
                q_rows = q_of(allf.time[i] + allf.rows[i] * allf.line_time[i])
                q_o = q_of(allf.time[o] + allf.rows[o] * allf.line_time[o])
                target = float(end if last else q_of(allf.time[i] + n_rows * allf.line_time[i]))
            q_o = np.where(np.abs(q_o - q_rows) < 1e-3 * q_frame, q_rows, q_o)  # rests: no step
            ch = kc.dilate_mask(moved[i] | moved[o] if last else moved[o])
            h[i] = kc.rectify_rows(allf.h[i], allf.h[o], q_rows, q_o, target, changed=ch,
                                   max_factor=2.0 if last else 1.0)
            if last and h_ref is not None:
                # extrapolation continues the trend of the frame before, and a cap stripped away
                # in the middle of the frame would go on below the surface it sat on: not below
                # the reference where the frame itself is not (null preset: void IoU 0.70 -> 0.84)
                cross = (allf.h[i] >= h_ref) & (h[i] < h_ref)
                h[i][cross] = h_ref[cross]
    return h, run_end


def _trough_sites(h_t: np.ndarray, valid_t: np.ndarray, sigma_r_t: float, h_peak: np.ndarray | None,
                  moved_next: np.ndarray, prev_dead: np.ndarray, h_ref: np.ndarray,
                  params: SegmentParams, min_area: int, err_ref: float):
    """The residue decision of one stripping trough (see :func:`_site_residue`).

    ``h_t``: height at the trough; ``h_peak``: at the plating peak before it (None: unknown, the
    sites count as having kept everything); ``moved_next``: pixels that changed in the next
    plating; ``prev_dead``: residue pixels at the previous trough. Returns ``(lab, d, dead,
    was_dead, idle)`` (per-site arrays indexed by ``lab``), or None when no site is above the
    reference.
    """
    from ecafm.kernels.sites import segment_sites

    d = h_t - h_ref
    ok = valid_t & np.isfinite(d)
    sig = kc.robust_sigma(d, ok)
    tau = kc.change_threshold(h_ref, h_t, sigma_d=sig, sigma_r=float(np.hypot(sigma_r_t, err_ref)),
                              k=params.k)
    above = ok & (d > np.maximum(tau, params.film_nm))
    lab = segment_sites(d, above, marker_h=params.marker_h_nm,
                        min_distance=params.marker_min_distance_px, min_area=min_area)
    n = int(lab.max())
    if n == 0:
        return None
    flat = lab.ravel()
    dz = np.where(above, d, 0.0)
    top = np.zeros(n + 1)
    np.maximum.at(top, flat, dz.ravel())
    core = (lab > 0) & (dz >= 0.5 * top[lab])
    lc = np.where(core, lab, 0).ravel()
    cnt = np.maximum(np.bincount(lc, minlength=n + 1), 1)

    def frac(m: np.ndarray) -> np.ndarray:
        return np.bincount(lc, weights=m.ravel().astype(float), minlength=n + 1) / cnt

    vt = np.bincount(flat, weights=np.clip(np.nan_to_num(d), 0, None).ravel(), minlength=n + 1)
    if h_peak is not None:
        dp = np.clip(np.nan_to_num(h_peak - h_ref), 0, None)
        vp = np.bincount(flat, weights=dp.ravel(), minlength=n + 1)
    else:
        vp = vt.copy()
    keep = vt / np.maximum(vp, 1e-9)
    idle = keep > _IDLE_KEEP  # kept ~everything: took no part in this cycle
    static_next = 1.0 - frac(moved_next) >= params.residue_vote
    was_dead = frac(prev_dead) >= 0.5
    dead = (keep >= params.residue_retention) & (~idle | static_next | was_dead)
    dead[0] = False
    return lab, d, dead, was_dead, idle


def _site_residue(allf: _Frames, run: np.ndarray, run_kind: np.ndarray, moved: np.ndarray,
                  h_ref: np.ndarray, params: SegmentParams, min_area: int, err_ref: float,
                  frames, prev_dead0: np.ndarray | None = None,
                  prev_h0: np.ndarray | None = None) -> np.ndarray:
    """INACTIVE_RESIDUE decided per site of each stripping trough, for the frames ``frames``.

    Dead Li is frozen, but live caps of neighbours (and new nuclei) grow over it in the next
    plating, so a per-pixel STATIC rule misses much of it. Per trough (last frame of a
    stripping run followed by a plating run): sites = marker watershed of ``h_trough - h_ref``.
    A site is residue when

    - its volume history says it was not stripped: it kept at least ``residue_retention`` of
      its volume above the reference at the plating peak, over the trough site's footprint.
      Live Li strips to 1 - CE of its volume, but a cap shrinks to a core whose share of the
      peak cap is large: a paraboloid cap keeps 0.23 of its peak volume over that core at CE
      0.93 and 0.32 at CE 0.84, while dead Li (at least half the cap left) keeps 0.58 or more;
    - and it stayed inactive: either it lost part of its volume in this stripping and then
      stopped (a site that kept everything took no part in this cycle: it counts only when at
      least ``residue_vote`` of its core - pixels of at least half its height - stays STATIC
      through the next plating), or it was residue at the previous trough already.

    A pixel of a residue site is INACTIVE_RESIDUE in a frame while the residue is the dominant
    material there: ``h - h_trough <= h_trough - h_ref`` (a neighbour's cap growing on top is
    thinner than the residue). In the frames of the stripping itself only sites that did not
    take part in it are residue (residue at the previous trough already, or idle): a site that
    converts in this stripping loses volume through it, so it is ACTIVE_DEPOSIT there ("GROW or
    SHRINK in this half-cycle"; SCIENCE's residue is STATIC through the whole stripping) and
    becomes residue in the next plating's frames. A site that was residue at the previous trough
    is residue in the stripping's frames only on the pixels that were residue then: dead Li does
    not move, and the rest of its footprint at this trough belongs to live caps next to it that
    this trough's watershed merged into it (demo seed 60: 3,307 live pixels called residue in
    stripping frames before; deposit IoU 0.858 -> 0.880), and there only where the dead layer
    is the thicker material, by the same rule as above with the previous trough's height as the
    dead layer: ``h - h_prev_trough <= h_prev_trough - h_ref``. Above it lies a live cap that
    grew over the dead Li's flank and is stripping now (demo seed 60: 1,978 of the 2,885
    deposit misses were such pixels; deposit IoU 0.896 -> 0.917, residue 0.903 -> 0.934).

    Returns the per-frame residue masks and, per trough frame index, the residue left at the
    trough as the next plating decides it (the cycle's end state, which volumes are taken of).
    """
    n_all, ny, nx = allf.h.shape
    out = np.zeros((n_all, ny, nx), bool)
    trough: dict[int, np.ndarray] = {}
    n_runs = len(run_kind)
    prev_dead = np.zeros((ny, nx), bool) if prev_dead0 is None else prev_dead0
    prev_h = prev_h0  # height at the previous trough (None: unknown)
    for r in range(n_runs - 1):
        if run_kind[r] != STRIP or run_kind[r + 1] != PLATE:
            continue
        idx = np.flatnonzero((run == r) & allf.usable)
        nidx = np.flatnonzero((run == r + 1) & allf.usable)
        pidx = (np.flatnonzero((run == r - 1) & allf.usable)
                if r > 0 and run_kind[r - 1] == PLATE else np.zeros(0, int))
        if idx.size == 0 or nidx.size == 0:
            continue
        t = int(idx[-1])
        ts = _trough_sites(allf.h[t], allf.valid[t], float(allf.sigma_r[t]),
                           allf.h[int(pidx[-1])] if pidx.size else None,
                           moved[nidx].any(axis=0), prev_dead, h_ref, params, min_area, err_ref)
        if ts is None:
            prev_dead, prev_h = np.zeros((ny, nx), bool), None
            continue
        lab, d, dead, was_dead, idle = ts
        prev_res, res_h = prev_dead, prev_h  # residue pixels at the previous trough, its height
        prev_dead, prev_h = dead[lab], allf.h[t]
        # took part in this stripping: lost volume and was not residue before
        converting = dead & ~was_dead & ~idle
        trough[t] = dead[lab]
        for i in frames:
            if run[i] not in (r, r + 1) or not allf.usable[i]:
                continue
            ok_site = dead & ~converting if run[i] == r else dead
            res = ok_site[lab] & ((allf.h[i] - allf.h[t]) <= d)
            if run[i] == r:
                # dead Li is frozen: in the stripping's own frames a site that was residue at the
                # previous trough is residue where it was then; the rest of its footprint at this
                # trough is a live neighbour that the watershed merged into it, stripping now
                res &= prev_res | ~was_dead[lab]
                if res_h is not None:
                    # and there only where the dead layer is still the dominant material: what
                    # lies above its height at the previous trough is a live cap stripping now
                    res &= ~was_dead[lab] | ((allf.h[i] - res_h) <= (res_h - h_ref))
            out[i] = res
    return out, trough

def _growth_maps(allf: _Frames, frames, h_ref: np.ndarray) -> list[np.ndarray]:
    """Height above the reference before the plating and at each of its usable frames.

    Nuclei are born at the start of a plating and grow as caps whose radius goes as the cube
    root of the plated charge: early in the plating they are still apart, while at the peak
    the overlap of two caps is one concave bump with a single maximum. The first map (the
    material left by the previous stripping) seeds the sites that carry over.
    """
    idx = [i for i in frames if allf.kind[i] == PLATE and allf.usable[i]]
    before = [j for j in range(idx[0]) if allf.usable[j]] if idx else []
    if not before:
        return []
    return [allf.h[j] - h_ref for j in (before[-1], *idx)]


def _prev_trough_residue(prev2: xr.Dataset, tf: xr.Dataset, h_ref: np.ndarray, fp: int, tip: float,
                         moved_next: np.ndarray, params: SegmentParams, min_area: int,
                         err_ref: float, ref_frame: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray] | None:
    """Residue pixels at cycle c-2's stripping trough, the history of the first trough in ``allf``.

    Dead Li stays, and once a neighbour's cap grows over it its core is no longer STATIC through
    the next plating: such a site is residue only because it was residue at the trough before
    (``was_dead``). Each job used to start that chain with no residue, so every cycle's job
    forgot the residue of the cycle before its ``prev`` and called overgrown residue live (demo
    seed 60: 1,092 residue pixels called live in cycle 3's plating frames). Only c-2's last
    plating and last stripping frames are read; the next plating is ``prev``'s, whose changed
    pixels (``moved_next``) the job already has. Its own history starts empty (one level deeper than before,
    keeping one job per cycle; the full chain is a sequential dependency between jobs).
    """
    kinds = _kinds(prev2, fp)
    ok = (prev2["frame_ok"].values & prev2["registration_ok"].values).astype(bool)
    plate, strip = np.flatnonzero((kinds == PLATE) & ok), np.flatnonzero((kinds == STRIP) & ok)
    if strip.size == 0:
        return None
    sel = [int(strip[-1])] + ([int(plate[plate < strip[-1]][-1])] if (plate < strip[-1]).any() else [])
    two = _load(prev2.isel(frame=sel), tf, h_ref, fp, tip, ref_frame)
    ts = _trough_sites(two.h[0], two.valid[0], float(two.sigma_r[0]), two.h[1] if len(sel) > 1 else None,
                       moved_next, np.zeros(h_ref.shape, bool), h_ref, params,
                       min_area, err_ref)
    if ts is None:
        return None
    lab, _, dead, _, _ = ts
    return dead[lab], two.h[0]


def segment_cycle(cycle: int, cur: xr.Dataset, cycle0: xr.Dataset, transforms: xr.Dataset, *,
                  prev: xr.Dataset | None = None, nxt: xr.Dataset | None = None,
                  prev2: xr.Dataset | None = None,
                  params: SegmentParams = SegmentParams(), metal: str = "Li") -> xr.Dataset:
    """Change labels, state classes, end states and site labels of one cycle (in memory).

    ``prev2`` (cycle c-2, optional): only its plating peak and stripping trough are read, to
    decide which sites were residue at the trough before ``prev``'s (:func:`_prev_trough_residue`).

    Returns a Dataset on the registered grid: ``change`` (frame, y, x) int8, ``state``
    (frame, y, x) uint8, ``site_label`` (frame, y, x) int32 (this cycle's watershed labels,
    numbered per cycle; persistent ids come from :mod:`ecafm.sites`), and (y, x) maps
    ``h_ref``, ``h_start``, ``h_peak``, ``h_trough``, ``label_peak``, ``state_end``.
    """
    from ecafm.constants import get_metal
    from ecafm.kernels.sites import (
        segment_sites,
        segment_sites_growth,
        segment_sites_layers,
        split_necks,
    )

    px = float(np.asarray(cur.attrs["pixel_size_nm"]).ravel()[0])
    a_px = float(np.prod(np.asarray(cur.attrs["pixel_size_nm"], float).ravel()[:2])) \
        if np.asarray(cur.attrs["pixel_size_nm"]).size > 1 else px * px
    cpv = get_metal(metal).charge_per_nm3_C
    min_area = params.min_area(px)
    tip = params.erosion_tip_nm
    h_ref, ref_frame = reference_height(cycle0, tip)
    fp = first_plating_frame(cycle0)
    err_ref = float(np.nan_to_num(transforms["error_px"].sel(frame=ref_frame).values))
    y0 = int(transforms.attrs["common_field_px"][0])
    n_rows = int(transforms.sizes["y"])
    ny, nx = h_ref.shape

    c_fr = _load(cur, transforms, h_ref, fp, tip, ref_frame)
    p_fr = _load(prev, transforms, h_ref, fp, tip, ref_frame) if prev is not None else None
    # of the next cycle only its plating is used: those frames alone are read and aligned
    # (bench-m: 8 of its 16 frames; each alignment ~0.1 s)
    n_fr = None
    if nxt is not None:
        n_fr = _load(nxt.isel(frame=np.flatnonzero(_kinds(nxt, fp) == PLATE)), transforms, h_ref, fp, tip,
                     ref_frame)
    n_cur = len(c_fr.frame)
    n_prev = 0 if p_fr is None else len(p_fr.frame)
    parts = [p for p in (p_fr, c_fr) if p is not None]
    if n_fr is not None:
        parts.append(n_fr)
    # the previous cycle's last usable heights (h_start below), kept before the parts' heights
    # are dropped: the concatenated copy holds them, and bench-l's segment job held every
    # height three times (parts, concatenation, rectified frames)
    p_last = None
    if p_fr is not None and p_fr.usable.any():
        p_last = p_fr.h[np.flatnonzero(p_fr.usable)[-1]].astype(np.float32)
    allf = _concat(parts)
    for p in parts:
        p.h = None
    n_all = len(allf.frame)
    sl_cur = slice(n_prev, n_prev + n_cur)
    # half-cycle id along the sequence: consecutive runs of kind
    run = np.concatenate([[0], np.cumsum(allf.kind[1:] != allf.kind[:-1])])

    # ---------------------------------------------------------------- change labels
    chg, sig_d = _change_pass(allf, params, min_area)
    # rectify every frame to the charge at its end (rows are scanned one after another), then
    # label changes again on the rectified frames
    h_rect, run_end = _rectify(allf, run, chg != 0, n_rows, h_ref)
    allf.h = h_rect
    chg, sig_d = _change_pass(allf, params, min_area)
    moved = chg != 0

    # ---------------------------------------------------------------- residue window
    n_runs = int(run.max()) + 1
    run_kind = np.array([allf.kind[run == r][0] for r in range(n_runs)])
    run_moved = np.stack([moved[run == r].any(axis=0) for r in range(n_runs)])
    residue = np.zeros((n_all, ny, nx), bool)
    decided = np.zeros(n_all, bool)
    for i in range(n_prev, n_prev + n_cur):
        r = run[i]
        if allf.kind[i] == PLATE and r > 0 and run_kind[r - 1] == STRIP:
            residue[i] = ~run_moved[r]
            decided[i] = True
        elif allf.kind[i] == STRIP and r + 1 < n_runs and run_kind[r + 1] == PLATE:
            later = moved[i:][run[i:] == r].any(axis=0)
            residue[i] = ~(later | run_moved[r + 1])
            decided[i] = True
        elif allf.kind[i] in (PRE,) or (allf.kind[i] == PLATE and cycle == 0):
            decided[i] = True  # no residue can exist before the first stripping
    # active: GROW or SHRINK in this half-cycle (so far) or in the previous one
    active = np.zeros((n_all, ny, nx), bool)
    for i in range(n_all):
        r = run[i]
        a = moved[: i + 1][run[: i + 1] == r].any(axis=0)
        if r > 0:
            a |= run_moved[r - 1]
        active[i] = a

    # ---------------------------------------------------------------- site-level residue
    first = np.flatnonzero((run == 0) & allf.usable)  # prev's plating: the next one after c-2's trough
    prev0 = (_prev_trough_residue(prev2, transforms, h_ref, fp, tip, moved[first].any(axis=0),
                                  params, min_area, err_ref, ref_frame)
             if prev2 is not None and params.residue_lookback and params.residue_retention > 0
             and run_kind[0] == PLATE and first.size else None)
    prev_dead0, prev_h0 = prev0 if prev0 is not None else (None, None)
    site_res, trough_res = (_site_residue(allf, run, run_kind, moved, h_ref, params, min_area,
                                          err_ref, range(n_prev, n_prev + n_cur), prev_dead0,
                                          prev_h0)
                            if params.residue_retention > 0 else (None, {}))

    # ---------------------------------------------------------------- classes per frame
    state = np.full((n_cur, ny, nx), kc.UNCERTAIN, np.uint8)
    sig_ref = np.full(n_cur, np.nan)
    slope_ref = kc.slope_px(h_ref)
    ever = np.zeros((ny, nx), bool)
    creep = np.zeros((ny, nx), bool)
    creep[: max(0, int(params.creep_rows) - y0)] = True
    tau_last_plate = None
    state_end = None
    for j in range(n_cur):
        i = n_prev + j
        if not allf.usable[i]:
            continue
        d = allf.h[i] - h_ref
        ok = allf.valid[i] & np.isfinite(d)
        sig_ref[j] = kc.robust_sigma(d, ok)
        sr = float(np.hypot(allf.sigma_r[i], err_ref))
        tau = kc.change_threshold(h_ref, allf.h[i], sigma_d=sig_ref[j], sigma_r=sr, k=params.k,
                                  slopes=(slope_ref, kc.slope_px(allf.h[i])))
        ever |= d > np.maximum(tau, params.film_nm)
        pit = (kc.pits(allf.h[i], ever, radius_px=params.pit_radius_px, tau=tau)
               if params.pit_radius_px > 0 else None)
        res = residue[i]
        if site_res is not None and decided[i]:
            res = site_res[i]
        kw = dict(tau_ref=tau, film_nm=params.film_nm, uncertain=~ok | creep, active=active[i],
                  pit=pit, min_void_px=min_area)
        state[j] = kc.state_classes(allf.h[i], h_ref, residue=res, **kw)
        if i in trough_res:  # the cycle's end state: residue as the next plating decides it
            state_end = kc.state_classes(allf.h[i], h_ref, residue=trough_res[i], **kw)
        if allf.kind[i] == PLATE:
            tau_last_plate = tau

    # ---------------------------------------------------------------- end states
    def _end(kind: int) -> tuple[np.ndarray | None, float]:
        idx = np.flatnonzero((c_fr.kind == kind) & c_fr.usable)
        if idx.size == 0:
            return None, float("nan")
        gi = int(idx[-1]) + n_prev
        return allf.h[gi].astype(np.float32), float(run_end[run[gi]])

    h_peak, q_peak = _end(PLATE)
    h_trough, q_trough = _end(STRIP)
    if h_peak is None:
        h_peak = h_ref.astype(np.float32)
    if h_trough is None:
        h_trough = h_peak
    # h_start: state before this cycle's plating (end of the previous stripping, or h_ref)
    h_start = h_ref.astype(np.float32) if p_last is None else p_last

    # ---------------------------------------------------------------- sites at the plating peak
    above_peak = h_peak - h_ref
    thr = np.maximum(tau_last_plate if tau_last_plate is not None else 0.0, params.film_nm)
    kw = dict(marker_h=params.marker_h_nm, min_distance=params.marker_min_distance_px,
              min_area=min_area, smooth_px=params.marker_smooth_px)
    growth = (_growth_maps(allf, range(n_prev, n_prev + n_cur), h_ref)
              if params.site_markers in ("layers", "growth") else [])
    if params.site_markers == "layers":  # necks split on whole footprints, before the layers cut them
        label_peak = segment_sites_layers(above_peak, above_peak > thr, growth, threshold=thr,
                                          neck_dynamic_px=params.neck_dynamic_px, **kw)
    elif params.site_markers == "growth":
        label_peak = segment_sites_growth(above_peak, above_peak > thr, growth, threshold=thr, **kw)
    elif params.site_markers == "peak":
        label_peak = segment_sites(above_peak, above_peak > thr, **kw)
    else:
        raise ValueError(f"site_markers must be 'layers', 'growth' or 'peak', got {params.site_markers!r}")
    if params.site_markers != "layers" and params.neck_dynamic_px > 0:
        label_peak = split_necks(label_peak, dynamic_px=params.neck_dynamic_px, min_area=min_area)
    site_lab = np.where(np.isin(state, (kc.VOID, kc.INACTIVE_RESIDUE, kc.ACTIVE_DEPOSIT,
                                        kc.DORMANT_DEPOSIT)), label_peak[None], 0).astype(np.int32)
    usable_cur = np.flatnonzero(c_fr.usable)
    if state_end is None:
        state_end = state[usable_cur[-1]] if usable_cur.size else state[-1]

    dims3 = ("frame", "y", "x")
    out = xr.Dataset(
        {
            "change": (dims3, chg[sl_cur], {"long_name": "change since the previous usable frame",
                                            "flag_values": [-1, 0, 1],
                                            "flag_meanings": "shrink static grow"}),
            "state": (dims3, state, {"long_name": "state class", "flag_values": list(range(6)),
                                     "flag_meanings": kc.CLASS_MEANINGS}),
            "site_label": (dims3, site_lab, {"long_name": "site of this cycle's plating peak "
                                             "(per-cycle numbering), 0 none"}),
            "h_ref": (("y", "x"), h_ref.astype(np.float32), {"units": "nm", "long_name":
                      f"reference height (frame {ref_frame}, last before the first plating)"}),
            "h_start": (("y", "x"), h_start, {"units": "nm", "long_name":
                        "last usable frame before this cycle's plating"}),
            "h_peak": (("y", "x"), h_peak.astype(np.float32), {"units": "nm", "long_name":
                       "height at the end of the plating (extrapolated in charge per row)"}),
            "h_trough": (("y", "x"), h_trough.astype(np.float32), {"units": "nm", "long_name":
                         "height at the end of the stripping (extrapolated in charge per row)"}),
            "label_peak": (("y", "x"), label_peak, {"long_name": "marker-watershed sites at the "
                           "plating peak (per-cycle numbering)"}),
            "state_end": (("y", "x"), state_end, {"long_name": "state class at the end of the "
                          "cycle (last usable frame; residue as the next plating decides it)",
                          "flag_values": list(range(6)),
                          "flag_meanings": kc.CLASS_MEANINGS}),
        },
        coords={
            "frame": c_fr.frame, "y": cur["y"].values, "x": cur["x"].values,
            "kind": ("frame", c_fr.kind, {"flag_values": [0, 1, 2], "flag_meanings": KIND_MEANINGS}),
            "usable": ("frame", c_fr.usable),
            "residue_decided": ("frame", decided[sl_cur]),
            "sigma_d": ("frame", sig_d[sl_cur], {"units": "nm", "long_name":
                        "robust noise of the difference to the previous usable frame"}),
            "sigma_ref": ("frame", sig_ref, {"units": "nm", "long_name":
                          "robust noise of h - h_ref"}),
            "sigma_r": ("frame", c_fr.sigma_r, {"units": "px"}),
            **{k: ("frame", cur[k].values) for k in ("time", "cycle", "half_cycle", "phase",
                                                      "charge")},
        },
        attrs={**{k: v for k, v in cur.attrs.items()}, "stage": "segment", "cycle": int(cycle),
               "reference_frame": ref_frame, "pixel_area_nm2": a_px, "charge_per_nm3_C": cpv,
               "metal": metal, "q_peak_C": q_peak, "q_trough_C": q_trough,
               "min_area_px": min_area, "residue_next_cycle": nxt is not None,
               "segment_params": asdict(params)},
    )
    out["y"].attrs = {"units": "nm"}
    out["x"].attrs = {"units": "nm"}
    out.attrs["change_px"] = counts = growth_direction(out)
    if looks_swapped(counts):
        if cur.attrs.get("ec_log", ""):
            log.warning("cycle %d: %s. Check positive_current_plates of the data set (now %s) in "
                        "config/datasets.tsv", cycle, swapped_text(counts),
                        cur.attrs.get("positive_current_plates", "not recorded"))
        else:
            log.warning("cycle %d: %s. The data set has no log: check the phase and half_cycle columns "
                        "of its frame sheet (half-cycle 0 is the first plating)", cycle, swapped_text(counts))
    return out


def growth_direction(seg: xr.Dataset) -> dict[str, int]:
    """GROW and SHRINK pixels (``change``) of a segmented cycle's usable plating and stripping
    frames: ``plate_grow_px``, ``plate_shrink_px``, ``strip_grow_px``, ``strip_shrink_px``."""
    ch, kind, usable = seg["change"].values, seg["kind"].values, seg["usable"].values.astype(bool)
    out = {}
    for k, name in ((PLATE, "plate"), (STRIP, "strip")):
        c = ch[(kind == k) & usable]
        out[f"{name}_grow_px"] = int(np.count_nonzero(c == 1))
        out[f"{name}_shrink_px"] = int(np.count_nonzero(c == -1))
    return out


def looks_swapped(counts: dict[str, int], *, ratio: float = 2.0, min_px: int = 100) -> bool:
    """Whether the surface shrinks while the log says plating and grows while it says stripping.

    Plating adds metal to the imaged electrode. On the demo data set the plating frames of each
    cycle have 11,800-13,000 GROW pixels against 150-240 SHRINK, the stripping frames the other
    way round. A sign convention the wrong way round (``positive_current_plates``) turns both
    around. Each half-cycle that has frames must lean the wrong way by ``ratio``, and the
    wrong-way pixels must add up to ``min_px``, so that a quiet cycle is never called swapped.
    """
    wrong_right = [(counts.get("plate_shrink_px", 0), counts.get("plate_grow_px", 0)),
                   (counts.get("strip_grow_px", 0), counts.get("strip_shrink_px", 0))]
    seen = [(w, r) for w, r in wrong_right if w + r > 0]
    return bool(seen) and all(w > ratio * r for w, r in seen) and sum(w for w, _ in seen) >= min_px


def swapped_cycles(cycles: pd.DataFrame) -> list[int]:
    """Cycles that track_sites marked ``plating_looks_swapped`` in cycles.tsv (none for tables
    written before the column existed). Read by the classes figure and the lifetime summary."""
    if "plating_looks_swapped" not in cycles:
        return []
    return cycles.loc[cycles["plating_looks_swapped"].astype(bool), "cycle"].astype(int).tolist()


def swapped_text(counts: dict[str, int]) -> str:
    """One sentence: the GROW and SHRINK pixels behind :func:`looks_swapped`."""
    return (f"plating and stripping look swapped: while plating {counts['plate_grow_px']} px grew and "
            f"{counts['plate_shrink_px']} shrank, while stripping {counts['strip_grow_px']} grew and "
            f"{counts['strip_shrink_px']} shrank")


def _class_table(seg: xr.Dataset, heights: np.ndarray) -> pd.DataFrame:
    """Area (px), volume (nm^3) and charge (C) of every class per frame.

    Volumes sum ``|h - h_ref|`` over the class pixels (deposit classes: height above the
    reference; VOID: depth below it); UNCERTAIN reports its area only.
    """
    a = float(seg.attrs["pixel_area_nm2"])
    cpv = float(seg.attrs["charge_per_nm3_C"])
    h_ref = seg["h_ref"].values.astype(np.float64)
    rows = []
    for j, f in enumerate(seg["frame"].values):
        st = seg["state"].values[j]
        d = np.nan_to_num(heights[j] - h_ref)
        for code, name in enumerate(kc.CLASS_NAMES):
            m = st == code
            vol = 0.0 if code == kc.UNCERTAIN else float(np.abs(d[m]).sum() * a)
            rows.append({"frame": int(f), "cycle": int(seg["cycle"].values[j]),
                         "half_cycle": int(seg["half_cycle"].values[j]),
                         "phase": int(seg["phase"].values[j]), "class": name,
                         "area_px": int(m.sum()), "volume_nm3": vol, "charge_C": vol * cpv})
    return pd.DataFrame(rows)


@one_blas_thread
def run_segment(cycle: int, cur: str | Path, cycle0: str | Path, transforms: str | Path, out: str | Path,
                table: str | Path, *, prev: str | Path | None = None, nxt: str | Path | None = None,
                prev2: str | Path | None = None,
                params: SegmentParams = SegmentParams(), metal: str = "Li", step) -> dict[str, Any]:
    """I/O: read registered cycles, segment cycle ``cycle``, write the cube and the class table."""
    from ecafm.store import open_cube, write_cube, write_table

    first = open_cube(cycle0)
    if not (first["phase"].values == 1).any():
        raise InputFileError(cycle0, "no plating frame (phase 1) in the data set's first cycle, so no "
                             "h_ref (the last frame before the first plating) and no sites",
                             hint=no_plating_advice(first.attrs.get("ec_log", ""),
                                                    first.attrs.get("positive_current_plates")))
    cur_ds = open_cube(cur).load()
    seg = segment_cycle(int(cycle), cur_ds, first, open_cube(transforms).load(),
                        prev=open_cube(prev) if prev else None,
                        nxt=open_cube(nxt) if nxt else None,
                        prev2=open_cube(prev2) if prev2 else None, params=params, metal=metal)
    h = cur_ds["height"].values.astype(np.float64)
    for i in range(h.shape[0]):
        h[i] -= kc.robust_offset(h[i] - seg["h_ref"].values)
    write_table(_class_table(seg, h), table, step=step)
    counts = np.bincount(seg["state"].values.ravel(), minlength=6)
    log.info("cycle %d: %d frames; class pixels %s; %d sites at the plating peak", cycle,
             seg.sizes["frame"], dict(zip(kc.CLASS_NAMES, counts.tolist(), strict=True)),
             int(seg["label_peak"].max()))
    return write_cube(seg, out, step=step)
