"""Stage ``register``: drift correction, parallel across cycles.

Structure (one Snakemake job each, see ``workflow/rules/register.smk``):

1. :func:`estimate_within_cycle` - chain of pairwise estimates inside one cycle (each good frame
   against the previous good frame), rigid shift plus per-row (intra-frame) drift, with QC;
2. :func:`estimate_link` - the last good frame of cycle c against the first good frame of c+1,
   plus direct estimates first(c) -> first(c+1) and first(c-1) -> first(c+1) for loop closure;
3. :func:`compose_transforms` - cheap gather: cumulative per-row displacement of every frame
   relative to the dataset's first good frame, cycle starts adjusted by robust least squares over
   chain and links, errors added in quadrature, the common field of view;
4. :func:`apply_cycle` - resample each frame of a cycle onto the reference grid, cropped to the
   common field of view, with a valid-pixel mask.

Sign convention (from :mod:`ecafm.kernels.register`): a displacement ``D(y) = (dy, dx)`` of a
frame means ``frame(y, x) ~= reference(y - dy, x - dx)``.

Pair estimates use stable regions: a first estimate aligns the pair, pixels whose difference
exceeds ``fit_k`` robust sigmas (growing or dissolving deposits) get zero weight, and the
estimate is repeated on what stayed. The reported uncertainty is the noise-limited precision on
the looser ``stable_k`` mask (see :func:`estimate_pair`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ecafm.blas import one_blas_thread

if TYPE_CHECKING:
    from ecafm.level import LevelParams

log = logging.getLogger(__name__)

FLAG_BITS = {"weak_peak": 1, "disagreement": 2, "jump": 4, "not_finite": 8, "ingest_qc": 16,
             "bad_reference": 32, "unlinked": 64, "row_drift_failed": 128}


def flags_to_int(flags) -> int:
    return int(sum(FLAG_BITS[f] for f in set(flags) if f in FLAG_BITS))


def int_to_flags(v: int) -> list[str]:
    return [k for k, b in FLAG_BITS.items() if int(v) & b]


@dataclass(frozen=True)
class RegisterParams:
    """Config key ``register``."""

    upsample_factor: int = 100
    row_drift: bool = True
    strip_height: int = 32
    stable_k: float = 3.0
    fit_k: float = 3.0
    max_jump_px: float = 10.0
    min_peak_ratio: float = 1.5
    max_disagreement_px: float = 1.0
    method: str = "robust"
    row_model: str = "auto"
    loop_weight: float = 0.5
    loop_fusion: str = "robust"
    resample_order: int = 3
    max_strip_scatter_px: float = 0.2

    def __post_init__(self):
        from ecafm.kernels.register import ROW_MODELS

        if self.row_model not in ROW_MODELS:
            raise ValueError(f"register.row_model must be one of {ROW_MODELS}, got {self.row_model!r}")
        if self.method not in ("robust", "fast"):
            raise ValueError(f"register.method must be 'robust' or 'fast', got {self.method!r}")
        if self.loop_fusion not in ("robust", "mean"):
            raise ValueError(f"register.loop_fusion must be 'robust' or 'mean', got {self.loop_fusion!r}")
        if not 0.0 <= float(self.loop_weight) <= 1.0:
            raise ValueError(f"register.loop_weight must be within [0, 1], got {self.loop_weight!r}")
        if not 0 < float(self.fit_k) <= float(self.stable_k):
            raise ValueError(f"register.fit_k must be in (0, stable_k = {self.stable_k!r}], got {self.fit_k!r}")
        if not float(self.max_strip_scatter_px) > 0:
            raise ValueError(f"register.max_strip_scatter_px must be > 0, got {self.max_strip_scatter_px!r}")
        if isinstance(self.resample_order, bool) or self.resample_order not in range(6):
            raise ValueError(f"register.resample_order must be a spline order 0..5, got {self.resample_order!r}")


@dataclass(frozen=True)
class PairResult:
    dy: float
    dx: float
    error: float
    crlb: float
    peak_ratio: float
    flags: tuple[str, ...]
    row_dy: np.ndarray
    row_dx: np.ndarray

    @property
    def ok(self) -> bool:
        return not self.flags


def _fill(a: np.ndarray) -> np.ndarray:
    """NaN filled with the median; float32 stays float32 (the kernels then work in float32)."""
    a = np.asarray(a)
    a = a.astype(np.float32 if a.dtype == np.float32 else np.float64, copy=False)
    ok = np.isfinite(a)
    if ok.all():  # the usual frame: no median of all its pixels (3 ms at 512^2)
        return a.copy()
    return np.where(ok, a, np.nanmedian(a[ok]) if ok.any() else 0.0)


def _start(ref: np.ndarray, mov: np.ndarray, s
           ) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """Aligned difference at a starting shift: (values on the common field, that field, their
    median, robust sigma), or None when the shift is not finite or nothing overlaps."""
    from ecafm.kernels.register import apply_shift

    if not (math.isfinite(s.dy) and math.isfinite(s.dx)):
        return None
    aligned, valid = apply_shift(mov, -s.dy, -s.dx)
    diff = (aligned - ref)[valid]
    if diff.size == 0:
        return None
    med = float(np.median(diff))
    return diff, valid, med, float(1.4826 * np.median(np.abs(diff - med)) + 1e-12)


def _texture(ref: np.ndarray, mov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both frames clipped at their background level (median + 2 robust sigmas): the
    substrate's texture without the deposits on it."""
    out = []
    for a in (ref, mov):
        med = np.median(a)
        lo = a[a <= med]
        sig = 1.4826 * np.median(med - lo) if lo.size else 0.0
        out.append(np.minimum(a, med + 2 * sig))
    return out[0], out[1]


ARBITRATION_RATIO = 0.9


def _arbitrate(ref, mov, s, gradients, weights, moving_weights, params: RegisterParams):
    """A pair flagged only ``disagreement`` (heights vs gradient images): the estimate that
    aligns the frames better decides. When the heights' shift leaves a robust sigma of the
    aligned difference at most ``ARBITRATION_RATIO`` of the gradients' shift's, the gradients
    were wrong and the flag is dropped; otherwise it stays (which one is wrong is not clear).

    Demo at 256 px, seed 0, pair 3 -> 4 (the first plating's peak): heights (-0.526, -0.619)
    px, truth (-0.533, -0.635); the gradients on the stable region (-1.15, -1.63), robust sigma
    2.62 against 1.80 nm. The flag cost the cycle's peak frame and with it every site of the
    first plating."""
    from ecafm.kernels.register import estimate_shift

    g = estimate_shift(*gradients, weights=weights, moving_weights=moving_weights,
                       upsample_factor=params.upsample_factor, min_peak_ratio=params.min_peak_ratio,
                       n_refine=0)
    a, b = _start(ref, mov, s), _start(ref, mov, g)
    if a is not None and (b is None or a[3] <= ARBITRATION_RATIO * b[3]):
        log.info("pair: heights (%.3f, %.3f) px and gradients (%.3f, %.3f) px disagree; the heights "
                 "align the frames better (robust sigma %.3g against %.3g) and are kept unflagged",
                 s.dy, s.dx, g.dy, g.dx, a[3], b[3] if b is not None else float("nan"))
        return replace(s, flags=(), ok=True)
    return s


def frame_gradients(frame: np.ndarray) -> np.ndarray:
    """The gradient image of a frame that :func:`estimate_pair`'s QC compares (NaN filled)."""
    from ecafm.kernels.register import gradient_magnitude

    f = _fill(frame)
    return gradient_magnitude(f, dtype=f.dtype)


def estimate_pair(reference: np.ndarray, moving: np.ndarray, *, params: RegisterParams,
                  gradients: tuple[np.ndarray, np.ndarray] | None = None) -> PairResult:
    """Rigid + per-row displacement of ``moving`` relative to ``reference`` on stable regions.

    ``gradients``: :func:`frame_gradients` of both frames when the caller has them (a chain
    uses every inner frame in two pairs); computed here otherwise.
    """
    from ecafm.kernels.register import (
        apply_shift,
        check_shift,
        estimate_row_drift,
        estimate_shift,
        estimate_shift_qc,
        refine_shift,
        taper_weights,
    )

    ref = _fill(reference)
    mov = _fill(moving)
    # the gradient images of the QC check are the same for both passes: computed once
    kw = dict(max_jump_px=math.inf, min_peak_ratio=params.min_peak_ratio,
              max_disagreement_px=params.max_disagreement_px, upsample_factor=params.upsample_factor,
              gradients=gradients or (frame_gradients(ref), frame_gradients(mov)))
    # First pass on the whole frames. It seeds the stable-region mask (k robust sigmas of the
    # aligned difference), for which its DFT-upsampled peak (1 / upsample_factor px) is precise
    # enough; the least-squares refinement and the gradient check run only when it is the final
    # estimate (no stable-region pass). bench-m, 120 pairs: -7% time per pair, row-mean error
    # RMS 0.0164 -> 0.0148 px against the truth.
    s0 = estimate_shift(ref, mov, min_peak_ratio=params.min_peak_ratio,
                        upsample_factor=params.upsample_factor, n_refine=0)
    start = _start(ref, mov, s0)
    if not s0.ok:
        # A weak whole-frame peak: tall caps growing between the frames dominate the heights'
        # spectrum (demo at 256 px: pair 2 -> 3 started 2 px off and its stable-region pass
        # locked on there with a clean peak). The estimates of the gradient images and of the
        # substrate's texture are the other starts; the smallest robust sigma of the aligned
        # difference wins.
        for g in (estimate_shift(*kw["gradients"], upsample_factor=params.upsample_factor, n_refine=0),
                  estimate_shift(*_texture(ref, mov), upsample_factor=params.upsample_factor, n_refine=0)):
            alt = _start(ref, mov, g)
            if alt is not None and (start is None or alt[3] < start[3]):
                s0, start = replace(s0, dy=g.dy, dx=g.dx), alt
    weights = moving_weights = broad = None
    if start is not None:
        diff, valid, med, sigma = start
        if diff.size > 100:

            def mask(k):
                m = np.zeros(ref.shape, np.float64)
                m[valid] = np.abs(diff - med) < k * sigma
                return m if 0.2 < m.mean() < 0.98 else None

            def pair(m):  # reference and moving weights
                return m, np.nan_to_num(apply_shift(m, s0.dy, s0.dx)[0], nan=0.0)

            tight = mask(params.fit_k)
            loose = mask(params.stable_k) if params.fit_k < params.stable_k else None
            if tight is None:  # too little left at fit_k: the stable_k mask alone
                tight, loose = loose, None
            if tight is not None:
                weights, moving_weights = pair(tight)
            if loose is not None:
                broad = pair(loose)
    # tapered once here for the estimate and its strips (the row drift uses the moving weights)
    moving_tapered = None
    if weights is not None:
        ref_tapered, moving_tapered = taper_weights(weights), taper_weights(moving_weights)
        s = estimate_shift_qc(ref, mov, weights=ref_tapered, moving_weights=moving_tapered,
                              tapered=True, **kw)
    else:
        s = check_shift(ref, mov, refine_shift(ref, mov, s0), **kw)
    if s.flags == ("disagreement",):
        s = _arbitrate(ref, mov, s, kw["gradients"], weights, moving_weights, params)
    if broad is not None and s.ok:
        # fit_k < stable_k (an option; the default fits on the stable_k mask): the estimate uses
        # only the tight core, against deposits that change by less than stable_k sigmas and
        # still bias it (bench-m seed 0's plating -> stripping pairs, 0.01 px each, one way).
        # The core drops the steep flanks that carry most of the shift information, so its own
        # noise-limited error is about twice the real one (demo seed 0: 0.043 against a measured
        # 0.016 px). The uncertainty handed on (error_px, the change threshold's sigma_r) is the
        # precision on the loose stable_k mask at the same shift.
        from ecafm.kernels.register import shift_precision

        err = shift_precision(ref, mov, s.dy, s.dx, weights=broad[0], moving_weights=broad[1])
        if math.isfinite(err):
            s = replace(s, error=err)
    flags = list(s.flags)
    ny = ref.shape[0]
    row_dy = np.full(ny, s.dy)
    row_dx = np.full(ny, s.dx)
    if params.row_drift and s.ok and ny >= 2 * params.strip_height:
        rd = estimate_row_drift(ref, mov, strip_height=params.strip_height,
                                weights=moving_tapered, tapered=True,
                                upsample_factor=params.upsample_factor, interpolation=params.row_model,
                                min_peak_ratio=params.min_peak_ratio, shift=(s.dy, s.dx))
        usable = rd.ok and np.isfinite(rd.dy).all() and np.isfinite(rd.dx).all()
        scatter = rd.strip_scatter() if usable else float("nan")
        agree = usable and math.hypot(np.mean(rd.dy) - s.dy, np.mean(rd.dx) - s.dx) <= max(0.5, 5 * s.error)
        if usable and not agree and scatter <= params.max_strip_scatter_px:
            # Consistent strips against the rigid shift, more than 0.5 px apart: one of them is
            # wrong, and whichever aligns the frames better (smaller robust sigma of the aligned
            # difference) is kept. bench-m seed 1, pair 23 -> 24 (end of a plating): the rigid
            # shift was 0.74 px off with a clean peak (ratio 42) while its 31 strips agreed to
            # 0.011 px and their mean was within 0.011 px of the truth.
            strips = replace(s, dy=float(np.mean(rd.dy)), dx=float(np.mean(rd.dx)))
            a, b = _start(ref, mov, s), _start(ref, mov, strips)
            if b is not None and (a is None or b[3] < a[3]):
                log.info("pair: rigid shift (%.3f, %.3f) px and its strips' mean (%.3f, %.3f) px disagree; "
                         "the strips align the frames better (robust sigma %.3g against %.3g) and are kept",
                         s.dy, s.dx, strips.dy, strips.dx, b[3], a[3] if a is not None else float("nan"))
                s, agree = strips, True
        if agree and scatter <= params.max_strip_scatter_px:
            row_dy, row_dx = rd.dy, rd.dx
        else:
            # Strips too weak (small or periodic frames), inconsistent with the whole-frame
            # estimate, or scattered about their own row model far beyond their claimed errors
            # (blocks of rows biased by growing deposits, bench-m's late plating frames): keep
            # the rigid shift for this pair (logged, not a failure).
            log.info("row drift not used for this pair (strips ok: %s, scatter %.3f px); rigid "
                     "shift kept", int(rd.strip_ok.sum()), scatter)
    return PairResult(float(s.dy), float(s.dx), float(s.error), float(s.crlb), float(s.peak_ratio),
                      tuple(dict.fromkeys(flags)), np.asarray(row_dy, float), np.asarray(row_dx, float))


def _fast_spectra(frame: np.ndarray, params: RegisterParams):
    from ecafm.kernels.register import fast_spectra

    return fast_spectra(_fill(frame), strip_height=params.strip_height if params.row_drift else None)


def estimate_pair_fast(reference, moving, *, params: RegisterParams) -> PairResult:
    """``register.method: fast``: one whitened phase correlation of the whole frames and one of
    their strips (batched), from spectra computed once per frame (``reference`` and
    ``moving`` are frames or :class:`~ecafm.kernels.register.FastSpectra`).

    QC: ``weak_peak`` (whole-frame peak ratio), ``disagreement`` (whole-frame estimate vs the
    mean of the strip estimates), ``jump`` later by :func:`_continuity`. No stable-region
    pass: see the README for its accuracy. A pair the fast estimate flags is estimated again
    by the robust method (:func:`estimate_pair`), whose result and flags are kept: on bench-m
    (512 px) the fast estimate flags 158 of 161 frames, and leaving them flagged excluded them.
    """
    from ecafm.kernels.register import FastSpectra, estimate_fast

    fa = reference if isinstance(reference, FastSpectra) else _fast_spectra(reference, params)
    fb = moving if isinstance(moving, FastSpectra) else _fast_spectra(moving, params)
    s, rd = estimate_fast(fa, fb, min_peak_ratio=params.min_peak_ratio,
                          max_disagreement_px=params.max_disagreement_px)
    if not s.ok:
        log.info("fast estimate flagged %s (peak ratio %.2f); pair re-estimated by the robust method",
                 list(s.flags), s.peak_ratio)
        return estimate_pair(fa.frame, fb.frame, params=params)
    ny = fb.frame.shape[0]
    row_dy, row_dx = np.full(ny, s.dy), np.full(ny, s.dx)
    if params.row_drift and s.ok and rd is not None:
        if rd.ok and math.hypot(np.mean(rd.dy) - s.dy, np.mean(rd.dx) - s.dx) <= max(0.5, 5 * s.error):
            row_dy, row_dx = rd.dy, rd.dx
        else:
            log.info("row drift not used for this pair (strips ok: %s); rigid shift kept",
                     int(rd.strip_ok.sum()))
    return PairResult(float(s.dy), float(s.dx), float(s.error), float(s.crlb), float(s.peak_ratio),
                      tuple(s.flags), np.asarray(row_dy, float), np.asarray(row_dx, float))


def _pair(reference, moving, *, params: RegisterParams, gradients=None) -> PairResult:
    """The pair estimate of ``params.method`` (``gradients``: see :func:`estimate_pair`)."""
    if params.method == "fast":
        return estimate_pair_fast(reference, moving, params=params)
    return estimate_pair(reference, moving, params=params, gradients=gradients)


def _continuity(results: list[PairResult | None], max_jump: float) -> list[PairResult | None]:
    """Flag a pair whose shift jumps from the median of its neighbours' shifts."""
    vec = np.array([[r.dy, r.dx] if r is not None and r.ok else [np.nan, np.nan] for r in results])
    out: list[PairResult | None] = []
    for i, r in enumerate(results):
        if r is None or not r.ok:
            out.append(r)
            continue
        nb = np.concatenate([vec[max(0, i - 2):i], vec[i + 1:i + 3]])
        nb = nb[np.isfinite(nb).all(axis=1)]
        if len(nb) >= 2 and math.hypot(*(np.array([r.dy, r.dx]) - np.median(nb, axis=0))) > max_jump:
            r = PairResult(r.dy, r.dx, r.error, r.crlb, r.peak_ratio, (*r.flags, "jump"), r.row_dy, r.row_dx)
        out.append(r)
    return out


def _params_attr(params: RegisterParams) -> dict[str, Any]:
    """Parameters recorded on the within-cycle estimates (the default method is left out, so
    that robust outputs are identical to those from before the key existed)."""
    d = asdict(params)
    if d["method"] == "robust":
        d.pop("method")
    return d


def _good_frames(ds: xr.Dataset) -> np.ndarray:
    h = ds["height"]
    finite = np.isfinite(h).any(dim=("y", "x")).values
    return ds["frame_ok"].values & finite


def estimate_within_cycle(leveled: xr.Dataset, *, params: RegisterParams) -> xr.Dataset:
    """Pairwise chain of one cycle: each good frame against the previous good frame."""
    import dask

    n, ny = leveled.sizes["frame"], leveled.sizes["y"]
    good = _good_frames(leveled)
    idx = np.flatnonzero(good)
    frames = leveled["height"]
    if params.method == "fast":
        # every frame's spectra once, used as 'moving' of one pair and 'reference' of the next
        spectra: dict[int, Any] = {}

        def spec(i: int):
            if i not in spectra:
                spectra[i] = _fast_spectra(frames[i].values, params)
            return spectra[i]

        pairs = [estimate_pair_fast(spec(int(a)), spec(int(b)), params=params)
                 for a, b in zip(idx[:-1], idx[1:], strict=True)]
        pair_of = lambda a, b: estimate_pair_fast(spec(a), spec(b), params=params)  # noqa: E731
    else:
        # every inner frame is the moving frame of one pair and the reference of the next: its
        # gradient image (the QC's second estimate) is computed once, as its own task
        grads = {int(i): dask.delayed(frame_gradients)(frames[int(i)].values) for i in idx}
        tasks = [dask.delayed(estimate_pair)(frames[a].values, frames[b].values, params=params,
                                             gradients=(grads[int(a)], grads[int(b)]))
                 for a, b in zip(idx[:-1], idx[1:], strict=True)]
        pairs = list(dask.compute(*tasks)) if tasks else []
        pair_of = lambda a, b: estimate_pair(frames[a].values, frames[b].values, params=params)  # noqa: E731
    pairs = _continuity(pairs, params.max_jump_px)
    # A frame whose pair failed is excluded; the next frame is re-estimated against the last good.
    ref_of = {int(b): int(a) for a, b in zip(idx[:-1], idx[1:], strict=True)}
    result: dict[int, PairResult] = {}
    last_good = int(idx[0]) if idx.size else -1
    for k, b in enumerate(idx[1:]):
        b = int(b)
        r = pairs[k]
        if ref_of[b] != last_good:
            r = pair_of(last_good, b)
            ref_of[b] = last_good
        result[b] = r
        if r.ok:
            last_good = b
        else:
            log.warning("frame %d (source frame %s): registration QC failed %s; excluded",
                        int(leveled["frame"][b]), int(leveled["source_index"][b]), list(r.flags))

    ref = np.full(n, -1, np.int32)
    dy = np.zeros(n)
    dx = np.zeros(n)
    err = np.zeros(n)
    crlb = np.zeros(n)
    peak = np.full(n, np.nan)
    flags = np.zeros(n, np.int32)
    row_dy = np.zeros((n, ny))
    row_dx = np.zeros((n, ny))
    for i in range(n):
        if not good[i]:
            flags[i] = FLAG_BITS["ingest_qc"]
            continue
        if i in result:
            r = result[i]
            ref[i] = ref_of[i]
            dy[i], dx[i], err[i], crlb[i], peak[i] = r.dy, r.dx, r.error, r.crlb, r.peak_ratio
            flags[i] = flags_to_int(r.flags)
            row_dy[i], row_dx[i] = r.row_dy, r.row_dx
    coords = {"frame": leveled["frame"].values, "y": leveled["y"].values}
    return xr.Dataset(
        {
            "ref_frame": ("frame", np.where(ref >= 0, leveled["frame"].values[ref], -1).astype(np.int32),
                          {"long_name": "frame this one was registered against (-1: chain start or excluded)"}),
            "dy": ("frame", dy, {"units": "px", "long_name": "rigid shift vs ref_frame, slow axis"}),
            "dx": ("frame", dx, {"units": "px", "long_name": "rigid shift vs ref_frame, fast axis"}),
            "error": ("frame", err, {"units": "px", "long_name": "1-sigma uncertainty of the shift"}),
            "crlb": ("frame", crlb, {"units": "px", "long_name": "achievable bound from noise and texture"}),
            "peak_ratio": ("frame", peak, {"long_name": "correlation peak over next-highest peak"}),
            "flags": ("frame", flags, {"long_name": "QC flag bits",
                                       "flag_masks": list(FLAG_BITS.values()),
                                       "flag_meanings": " ".join(FLAG_BITS)}),
            "row_dy": (("frame", "y"), row_dy, {"units": "px", "long_name": "per-row shift vs ref_frame"}),
            "row_dx": (("frame", "y"), row_dx, {"units": "px", "long_name": "per-row shift vs ref_frame"}),
        },
        coords=coords,
        attrs={"stage": "register_within", "register_params": _params_attr(params)},
    )


def estimate_link(left: xr.Dataset | None, right: xr.Dataset, *, params: RegisterParams,
                  before: xr.Dataset | None = None,
                  level: Callable[[np.ndarray], np.ndarray] | None = None) -> xr.Dataset:
    """Link two neighbouring cycles: last good of ``left`` -> first good of ``right``, plus the
    direct first(left) -> first(right) and, when ``before`` (the cycle before ``left``) is given,
    the skip first(before) -> first(right). Direct and skip links are the redundant
    measurements :func:`compose_transforms` adjusts the cycle starts with.

    ``level``: applied to each frame read (raw cycles of the ingested cube, leveled one frame at a
    time; None when the cycles are leveled already). ``left`` None (the data set's first cycle):
    every kind is unlinked."""
    ny = right.sizes["y"]

    def first_last(ds):
        # the first and the last good frame, read one at a time (a lazily opened cycle is not
        # read whole: bench-m's link job read three cycles of 16 frames for four frames)
        if ds is None:
            return None, None
        ok = np.flatnonzero(ds["frame_ok"].values)

        def good(order):
            for i in order:
                h = ds["height"][int(i)].values
                if level is not None:
                    h = level(h)
                if np.isfinite(h).any():
                    return h, int(ds["frame"][int(i)])
            return None

        a = good(ok)
        return (None, None) if a is None else (a, good(ok[::-1]))

    (lf, ll), (rf, _), (bf, _) = first_last(left), first_last(right), first_last(before)
    specs = {"link": (ll, rf), "direct": (lf, rf), "skip": (bf, rf)}
    rows = {}
    # the first good frame of ``right`` is the moving frame of all three pairs: its QC gradient
    # image is computed once
    g_right = None if rf is None or params.method == "fast" else frame_gradients(rf[0])
    for kind, (a, b) in specs.items():
        if a is not None and b is not None:
            g = None if g_right is None else (frame_gradients(a[0]), g_right)
            r = _pair(a[0], b[0], params=params, gradients=g)
            rows[kind] = (a[1], b[1], r.dy, r.dx, r.error, r.peak_ratio, flags_to_int(r.flags), r.row_dy, r.row_dx)
        else:
            rows[kind] = (-1, -1, np.nan, np.nan, np.nan, np.nan, FLAG_BITS["unlinked"],
                          np.full(ny, np.nan), np.full(ny, np.nan))
    kinds = list(specs)
    col = lambda j: np.array([rows[k][j] for k in kinds])  # noqa: E731
    return xr.Dataset(
        {
            "from_frame": ("kind", col(0).astype(np.int32)),
            "to_frame": ("kind", col(1).astype(np.int32)),
            "dy": ("kind", col(2).astype(float), {"units": "px"}),
            "dx": ("kind", col(3).astype(float), {"units": "px"}),
            "error": ("kind", col(4).astype(float), {"units": "px"}),
            "peak_ratio": ("kind", col(5).astype(float)),
            "flags": ("kind", col(6).astype(np.int32), {"flag_masks": list(FLAG_BITS.values()),
                                                        "flag_meanings": " ".join(FLAG_BITS)}),
            "row_dy": (("kind", "y"), np.stack(col(7)), {"units": "px"}),
            "row_dx": (("kind", "y"), np.stack(col(8)), {"units": "px"}),
        },
        coords={"kind": np.arange(len(kinds), dtype=np.int8), "y": right["y"].values},
        attrs={"stage": "register_link", "kind_meanings": "0 link (last good -> first good), "
               "1 direct (first good -> first good, for loop closure), 2 skip (first good of the "
               "cycle before -> first good; unlinked for the first boundary)"},
    )


def _chain(within, links, frames, max_closure_px, *, fuse, anchored=None, bridge=True):
    """Chain pair and link shifts into displacements; ``fuse`` {cycle: (dy, dx)} corrections at
    cycle starts, spread linearly over the previous cycle's frames. Also returns the loop
    misclosure (chain - direct) per cycle start, NaN where none was usable, the set of cycles
    whose start has no independent chain observation (anchored on the direct link for a closure
    beyond ``max_closure_px``, or bridged; ``anchored``, when given, imposes that set instead of
    testing the closure again), and per linked cycle start the cycle its position was carried
    from (c - 1, or c - 2 across a skip-link bridge). ``bridge=False`` keeps the rule of records
    made before the skip link: a failed boundary excludes every later frame."""
    ny = within[0].sizes["y"]
    n = frames.size
    D_y = np.full((n, ny), np.nan)
    D_x = np.full((n, ny), np.nan)
    var = np.full(n, np.nan)
    flags = np.concatenate([w["flags"].values for w in within]).astype(np.int32)
    pos = {int(f): i for i, f in enumerate(frames)}
    closure = np.full(len(within), np.nan)
    mis = np.full((len(within), 2), np.nan)
    offset_y, offset_x, offset_var = np.zeros(ny), np.zeros(ny), 0.0
    linked = True
    anchor_set = set()
    source = {}
    for c, w in enumerate(within):
        if c > 0:
            lk = links[c - 1]
            lflags = int(lk["flags"].values[0])
            src = int(lk["from_frame"].values[0])
            if lflags == 0 and src in pos and np.isfinite(D_y[pos[src]]).all():
                offset_y = D_y[pos[src]] + lk["row_dy"].values[0]
                offset_x = D_x[pos[src]] + lk["row_dx"].values[0]
                offset_var = var[pos[src]] + float(lk["error"].values[0]) ** 2
                # loop closure: direct first(c-1)->first(c) vs chain first(c-1)->last(c-1)->first(c)
                d_src = int(lk["from_frame"].values[1])
                if int(lk["flags"].values[1]) == 0 and d_src in pos:
                    chain = np.array([offset_y.mean() - D_y[pos[d_src]].mean(),
                                      offset_x.mean() - D_x[pos[d_src]].mean()])
                    closure[c] = float(np.hypot(*(chain - [lk["dy"].values[1], lk["dx"].values[1]])))
                    miss = chain - [lk["row_dy"].values[1].mean(), lk["row_dx"].values[1].mean()]
                    reanchor = closure[c] > max_closure_px if anchored is None else c in anchored
                    if reanchor and np.isfinite(D_y[pos[d_src]]).all():
                        anchor_set.add(c)
                        log.warning("cycle %d: chain and direct link differ by %.2f px at its start; "
                                    "anchored on the direct link, frames of cycle %d after its first "
                                    "flagged", c, closure[c], c - 1)
                        offset_y = D_y[pos[d_src]] + lk["row_dy"].values[1]
                        offset_x = D_x[pos[d_src]] + lk["row_dx"].values[1]
                        offset_var = var[pos[d_src]] + float(lk["error"].values[1]) ** 2
                        for f in within[c - 1]["frame"].values:
                            if int(f) != d_src:
                                flags[pos[int(f)]] |= FLAG_BITS["disagreement"]
                    elif np.isfinite(miss).all():
                        mis[c] = miss
                linked = True
                source[c] = c - 1
            else:
                # The last -> first link failed (or its source frame is not registered): the
                # direct link first(c-1) -> first(c), else the skip link first(c-2) -> first(c),
                # bridges the boundary, so one bad boundary does not exclude every later frame.
                linked = False
                for kind in (1, 2) if bridge else ():
                    if kind >= lk.sizes["kind"] or int(lk["flags"].values[kind]) != 0:
                        continue
                    b_src = int(lk["from_frame"].values[kind])
                    if b_src in pos and np.isfinite(D_y[pos[b_src]]).all():
                        offset_y = D_y[pos[b_src]] + lk["row_dy"].values[kind]
                        offset_x = D_x[pos[b_src]] + lk["row_dx"].values[kind]
                        offset_var = var[pos[b_src]] + float(lk["error"].values[kind]) ** 2
                        linked = True
                        source[c] = c - kind
                        anchor_set.add(c)  # no independent chain observation for this start
                        log.warning("cycle link %d -> %d failed (flags %s): bridged by the %s link "
                                    "from frame %d", c - 1, c, int_to_flags(lflags),
                                    "direct" if kind == 1 else "skip", b_src)
                        break
                if not linked and bridge:
                    log.warning("cycle link %d -> %d failed (flags %s) and no direct or skip link "
                                "bridges it: cycle %d excluded", c - 1, c, int_to_flags(lflags), c)
                elif not linked:
                    log.warning("cycle link %d -> %d failed (flags %s): later frames excluded",
                                c - 1, c, int_to_flags(lflags))
            # (mean rule: only where this pass measured the misclosure, as its records were made)
            if linked and fuse is not None and c in fuse and (bridge or np.isfinite(mis[c]).all()):
                # spread along the previous cycle's chain; the cycle start takes all
                idx = [pos[int(f)] for f in within[c - 1]["frame"].values
                       if np.isfinite(D_y[pos[int(f)]]).all()]
                steps = len(idx)  # pairs + the link, from first(c-1) to first(c)
                for s_i, i in enumerate(idx):
                    D_y[i] += fuse[c][0] * s_i / steps
                    D_x[i] += fuse[c][1] * s_i / steps
                offset_y = offset_y + fuse[c][0]
                offset_x = offset_x + fuse[c][1]
        for k in range(w.sizes["frame"]):
            i = pos[int(w["frame"].values[k])]
            if not linked:
                flags[i] |= FLAG_BITS["unlinked"]
                continue
            if flags[i] != 0:
                continue
            ref = int(w["ref_frame"].values[k])
            if ref < 0:  # chain start of this cycle
                D_y[i], D_x[i], var[i] = offset_y, offset_x, offset_var
            else:
                j = pos[ref]
                D_y[i] = D_y[j] + w["row_dy"].values[k]
                D_x[i] = D_x[j] + w["row_dx"].values[k]
                var[i] = var[j] + float(w["error"].values[k]) ** 2
    return D_y, D_x, var, flags, closure, mis, anchor_set, source


#: Tukey biweight tuning constant and the scale floor (px) of the cycle-start adjustment
_TUKEY_C = 4.685
_ADJUST_SCALE_FLOOR_PX = 0.01


#: kinds of the cycle-start observations (``obs_kind`` of transforms.zarr)
OBS_KINDS = ("chain", "direct", "skip")


def _adjust_starts(within, links, D_y, D_x, pos, anchored, source, loop_weight: float
                   ) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray]]:
    """Robust least-squares positions of the cycle starts; returns the ``fuse`` corrections of
    :func:`_chain` (per cycle start c >= 1: adjusted minus chained increment from start c-1) and
    the observations (kind index into :data:`OBS_KINDS`, from and to frame, residual in px,
    final weight relative to the nominal one).

    Observations of the position P_c of each cycle's chain start (P_0 fixed): the chain
    P_c - P_{c-1} (pairs of cycle c-1 plus the link; variance w / (1 - w) of a link's, w =
    ``loop_weight``), the direct link P_c - P_{c-1} and the skip link P_c - P_{c-2} (variance 1
    each). A position is the line through the per-row displacement, both axes: row-mean shift and
    slope over the frame (the drift velocity). The slope matters: chaining adds every pair's
    row-profile error, and on bench-m seed 0, once the row means were adjusted, the profile's shape
    carried 0.326 of the 0.329 px RMS accumulated per-row error (0.147 px of it not a line).
    Tukey-biweight reweighting (scale: 1.4826 MAD, at least ``_ADJUST_SCALE_FLOOR_PX``), for the
    row means and for the slopes separately, drops an observation that disagrees with the others:
    with the skip links every increment is measured three ways, so a wrong chain or a wrong direct
    link is outvoted instead of averaged in. The recorded residuals and weights are the row
    means'. Hand-written: a few dozen unknowns, numpy's lstsq suffices.
    """
    n_c = len(within)
    starts = []
    for w in within:
        k = np.flatnonzero((w["ref_frame"].values < 0) & (w["flags"].values == 0))
        starts.append(int(w["frame"].values[k[0]]) if k.size else -1)
    ny = D_y.shape[1]
    yc = (np.arange(ny) - (ny - 1) / 2.0) / max(ny - 1, 1)  # -0.5 .. 0.5 over the frame
    syy = float(yc @ yc) or 1.0

    def line(dy, dx):  # (mean y, mean x, slope y, slope x) of a per-row profile; slope in px per frame
        return np.array([dy.mean(), dx.mean(), (dy @ yc) / syy, (dx @ yc) / syy])

    M = np.full((n_c, 4), np.nan)
    for c, f in enumerate(starts):
        if f >= 0 and np.isfinite(D_y[pos[f]]).all():
            M[c] = line(D_y[pos[f]], D_x[pos[f]])
    known = np.isfinite(M).all(axis=1)
    none = {"kind": np.zeros(0, np.int8), "from_frame": np.zeros(0, np.int32), "to_frame": np.zeros(0, np.int32),
            "residual_px": np.zeros(0), "weight": np.zeros(0)}
    if loop_weight <= 0 or known.sum() < 2 or not known[0]:
        return {}, none
    var_chain = loop_weight / (1.0 - loop_weight) if loop_weight < 1 else 1e10  # 1: a fallback only
    rows, obs, var, what = [], [], [], []

    def add(a, b, value, v, kind):
        e = np.zeros(n_c)
        e[b], e[a] = 1.0, -1.0
        rows.append(e)
        obs.append(value)
        var.append(v)
        what.append((kind, starts[a], starts[b]))

    for c in range(1, n_c):
        if known[c] and known[c - 1] and c not in anchored:
            add(c - 1, c, M[c] - M[c - 1], var_chain, 0)
        lk = links[c - 1]
        for kind, a in ((1, c - 1), (2, c - 2)):
            if (kind >= lk.sizes["kind"] or a < 0 or not (known[a] and known[c])
                    or int(lk["flags"].values[kind]) != 0):
                continue
            if (int(lk["from_frame"].values[kind]), int(lk["to_frame"].values[kind])) != (starts[a], starts[c]):
                continue
            add(a, c, line(lk["row_dy"].values[kind], lk["row_dx"].values[kind]), 1.0, kind)
    if not rows:
        return {}, none
    A, v = np.array(rows), np.array(var)
    free = known.copy()
    free[0] = False  # the first cycle's start holds the reference frame: fixed at its position
    b = np.array(obs) - A[:, [0]] * M[0]
    A = A[:, free]  # cycles after a failed link take no part

    def irls(cols):
        wt = 1.0 / v
        for _ in range(50):
            sw = np.sqrt(wt)[:, None]
            P = np.linalg.lstsq(A * sw, b[:, cols] * sw, rcond=None)[0]
            res = np.hypot(*(A @ P - b[:, cols]).T) / np.sqrt(v)
            scale = max(1.4826 * float(np.median(res)), _ADJUST_SCALE_FLOOR_PX)
            u = res / (_TUKEY_C * scale)
            new = np.maximum(np.where(u < 1, (1 - u**2) ** 2, 0.0), 1e-6) / v
            if np.allclose(new, wt, rtol=1e-6, atol=0):
                break
            wt = new
        return P, res, wt

    # row-mean shifts and slopes each with their own weights: a link whose strips went wrong can
    # have a wrong slope and a right mean (benchmarks/RESULTS.md, session 8)
    P_mean, res, wt = irls([0, 1])
    P = np.hstack([P_mean, irls([2, 3])[0]])
    kinds, fr, to = (np.array(x) for x in zip(*what, strict=True))
    resid, w_rel = res * np.sqrt(v), np.minimum(wt * v, 1.0)
    for k, a, b_, r, w_ in zip(kinds, fr, to, resid, w_rel, strict=True):
        if w_ < 0.5:
            log.info("cycle-start adjustment: %s %d -> %d down-weighted to %.2f (residual %.3f px)",
                     OBS_KINDS[k], a, b_, w_, r)
    pos_c = np.full((n_c, 4), np.nan)
    pos_c[0] = M[0]
    pos_c[free] = P
    fuse = {}
    for c in range(1, n_c):
        a = source.get(c, c - 1)  # the start this one's chained position was carried from
        if known[c] and known[a]:
            d = (pos_c[c] - pos_c[a]) - (M[c] - M[a])
            fuse[c] = (d[0] + d[2] * yc, d[1] + d[3] * yc)
    return fuse, {"kind": kinds.astype(np.int8), "from_frame": fr.astype(np.int32), "to_frame": to.astype(np.int32),
                  "residual_px": resid, "weight": w_rel}


def compose_transforms(within: list[xr.Dataset], links: list[xr.Dataset], *,
                       pixel_size_nm: tuple[float, float], nx: int,
                       max_closure_px: float = 1.0,
                       loop_weight: float = RegisterParams.loop_weight,
                       fusion: str = "robust") -> xr.Dataset:
    """Cumulative per-row displacement of every frame relative to the dataset's reference frame.

    Loop closure at each cycle start: the direct pair first(c-1) -> first(c) against the chain
    first(c-1) -> ... -> last(c-1) -> first(c). When they differ by more than
    ``max_closure_px``, a pair of cycle c-1 went wrong without a flag (bench-l: one pair 3.2
    px off with a clean peak, and all 476 later frames inherited it). Cycle c is then anchored
    on the direct pair instead, and the frames of cycle c-1 after its first are flagged
    ``disagreement`` (which of them is wrong cannot be told), so nothing downstream treats them
    as registered.

    Below that limit the chain, the direct link and the skip link first(c-2) -> first(c) are
    independent measurements of where each cycle starts, and the chain's error grows with every
    pair (most of all with the pairs of a plating, where the surface changes while it is scanned).
    ``fusion="robust"`` (default) adjusts all cycle starts at once by robust least squares
    (:func:`_adjust_starts`; ``loop_weight`` w sets the chain's variance to w / (1 - w) of a
    link's: 0.5 equal, 1 links only, 0 no adjustment), and the frames of cycle c-1 get the
    correction of start c in proportion to their place along the chain, as a least-squares
    adjustment of a loop with equal pair variances does. The pairs' own error estimates are not
    used as weights: against the generator's truth they are 6-70x too small and do not follow the
    plating pairs' larger errors. Why robust and why skip links: on bench-m a single wrong
    observation, a chain 0.69 px off (seed 1) or a direct link 0.16 px off (seed 0), was averaged
    into every later frame by the mean of chain and direct link; with the skip links the wrong one
    is outvoted (error at frame 160: seed 0 0.139 -> 0.031 px, seed 1 0.392 -> 0.068 px;
    benchmarks/RESULTS.md, session 11). ``loop_closure_px`` is the chain's misclosure before the
    adjustment. ``fusion="mean"`` is the earlier rule (start = chain - w
    * misclosure, no skip links), kept so that ``ecafm audit`` re-runs older records exactly.
    """
    if fusion not in ("robust", "mean"):
        raise ValueError(f"fusion must be 'robust' or 'mean', got {fusion!r}")
    frames = np.concatenate([w["frame"].values for w in within])
    ny = within[0].sizes["y"]
    n = frames.size
    cyc = np.concatenate([np.full(w.sizes["frame"], c) for c, w in enumerate(within)])
    robust = fusion == "robust"
    D_y, D_x, var, flags, closure, mis, anchored, source = _chain(within, links, frames, max_closure_px,
                                                                  fuse=None, bridge=robust)
    if robust:
        pos = {int(f): i for i, f in enumerate(frames)}
        fuse, obs = _adjust_starts(within, links, D_y, D_x, pos, anchored, source, loop_weight)
    else:  # "mean": records composed before the robust adjustment (ecafm audit)
        good = np.isfinite(mis).all(axis=1)
        fuse = {int(c): -loop_weight * mis[c] for c in np.flatnonzero(good)} if loop_weight > 0 else {}
        obs = None
    adjust = np.full(len(within), np.nan)
    for c, v in fuse.items():
        adjust[c] = float(np.sqrt(np.mean(np.asarray(v[0]) ** 2 + np.asarray(v[1]) ** 2)))
    if fuse:
        D_y, D_x, var, flags, closure2, *_ = _chain(within, links, frames, max_closure_px, fuse=fuse,
                                                    anchored=anchored if robust else None, bridge=robust)
        if not robust:  # the mean rule's records report the closure after fusing
            closure = closure2
    ok = (flags == 0) & np.isfinite(D_y).all(axis=1)
    py, px = pixel_size_nm
    finite = np.isfinite(D_y).all(axis=1)
    mean_y = np.full(n, np.nan)
    mean_x = np.full(n, np.nan)
    mean_y[finite] = D_y[finite].mean(axis=1)
    mean_x[finite] = D_x[finite].mean(axis=1)
    rect = common_field(D_y[ok], D_x[ok], ny, nx)
    extra = {}
    if obs is not None:  # the robust adjustment's record (absent from "mean" records, as before)
        extra = {
            "start_adjust_px": ("segment", adjust, {"units": "px", "long_name": "correction of each cycle start "
                                                    "by the robust adjustment (magnitude)"}),
            "obs_kind": ("observation", obs["kind"], {"long_name": "cycle-start observation",
                                                      "flag_values": list(range(len(OBS_KINDS))),
                                                      "flag_meanings": " ".join(OBS_KINDS)}),
            "obs_from_frame": ("observation", obs["from_frame"]),
            "obs_to_frame": ("observation", obs["to_frame"]),
            "obs_residual_px": ("observation", obs["residual_px"], {"units": "px"}),
            "obs_weight": ("observation", obs["weight"], {"long_name": "final weight relative to the nominal "
                                                          "one (0: outvoted)"}),
        }
    return xr.Dataset(
        {
            **extra,
            "shift_y": (("frame", "y"), D_y, {"units": "px", "long_name": "displacement per row, slow axis"}),
            "shift_x": (("frame", "y"), D_x, {"units": "px", "long_name": "displacement per row, fast axis"}),
            "dy_px": ("frame", mean_y, {"units": "px", "long_name": "row-mean displacement, slow axis"}),
            "dx_px": ("frame", mean_x, {"units": "px", "long_name": "row-mean displacement, fast axis"}),
            "dy_nm": ("frame", mean_y * py, {"units": "nm"}),
            "dx_nm": ("frame", mean_x * px, {"units": "nm"}),
            "error_px": ("frame", np.sqrt(var), {"units": "px", "long_name": "accumulated 1-sigma uncertainty",
                                                  "comment": "propagated from the pairs' noise-limited estimates; "
                                                  "on the generator the actual drift error is 2-30x larger "
                                                  "(benchmarks/RESULTS.md, session 6)"}),
            "ok": ("frame", ok, {"long_name": "registered and usable"}),
            "flags": ("frame", flags, {"flag_masks": list(FLAG_BITS.values()), "flag_meanings": " ".join(FLAG_BITS)}),
            "cycle_index": ("frame", cyc.astype(np.int32)),
            "loop_closure_px": ("segment", closure, {"units": "px",
                                                     "long_name": "direct minus chained shift at each cycle start"}),
        },
        coords={"frame": frames.astype(np.int32), "y": within[0]["y"].values,
                "segment": np.arange(len(within), dtype=np.int32)},
        attrs={"stage": "register_compose", "common_field_px": list(rect), "pixel_size_nm": [py, px],
               "common_field_convention": "[y0, y1, x0, x1) in reference-grid pixels"},
    )


def common_field(D_y: np.ndarray, D_x: np.ndarray, ny: int, nx: int) -> tuple[int, int, int, int]:
    """Largest reference-grid rectangle that every usable frame covers: [y0, y1) x [x0, x1)."""
    if D_y.size == 0:
        return (0, ny, 0, nx)
    # A frame displaced by D is resampled at (Y + D): inside the frame when 0 <= Y + D <= n - 1.
    y0 = int(math.ceil(max(0.0, -float(np.min(D_y)))))
    y1 = int(math.floor(min(float(ny - 1), float(ny - 1 - np.max(D_y))))) + 1
    x0 = int(math.ceil(max(0.0, -float(np.min(D_x)))))
    x1 = int(math.floor(min(float(nx - 1), float(nx - 1 - np.max(D_x))))) + 1
    if y1 - y0 < 8 or x1 - x0 < 8:
        raise ValueError(f"common field of view is empty (rows {y0}..{y1}, cols {x0}..{x1}): "
                         "drift exceeds the frame; check the registration QC figure")
    return (y0, y1, x0, x1)


def _apply_one(h, sy, sx, *, rect, order):
    from ecafm.kernels.register import apply_row_drift

    y0, y1, x0, x1 = rect
    if not np.isfinite(sy).all():
        shape = (y1 - y0, x1 - x0)
        return np.full(shape, np.nan, np.float32), np.zeros(shape, bool)
    out, valid = apply_row_drift(_fill(h), sy, sx, inverse=True, order=order)
    out = np.where(valid & np.isfinite(h if h.shape == out.shape else out), out, np.nan)
    return out[y0:y1, x0:x1].astype(np.float32), valid[y0:y1, x0:x1]


def apply_cycle(leveled: xr.Dataset, transforms: xr.Dataset, *,
                order: int = RegisterParams.resample_order) -> xr.Dataset:
    """Resample the frames of one cycle onto the reference grid, cropped to the common field.

    ``order`` is the spline order (``register.resample_order``). Cubic (3) keeps the flanks of
    steep deposits where they are; linear (1) pushes every edge outwards by the sub-pixel part
    of the shift whenever a low threshold follows (demo seed 0, 1 nm: deposit IoU 0.861 with 1,
    0.895 with 3; see benchmarks/ACCURACY.md).
    """
    rect = tuple(int(v) for v in transforms.attrs["common_field_px"])
    t = transforms.sel(frame=leveled["frame"].values)
    out, valid = xr.apply_ufunc(
        _apply_one, leveled["height"], t["shift_y"], t["shift_x"],
        input_core_dims=[["y", "x"], ["y"], ["y"]],
        output_core_dims=[["yr", "xr"], ["yr", "xr"]],
        exclude_dims={"y"},
        vectorize=True, dask="parallelized", output_dtypes=[np.float32, bool],
        dask_gufunc_kwargs={"output_sizes": {"yr": rect[1] - rect[0], "xr": rect[3] - rect[2]}},
        kwargs={"rect": rect, "order": int(order)},
    )
    y0, y1, x0, x1 = rect
    ds = xr.Dataset({"height": out.rename(yr="y", xr="x"), "valid": valid.rename(yr="y", xr="x")})
    ds = ds.assign_coords(y=leveled["y"].values[y0:y1], x=leveled["x"].values[x0:x1])
    ds["height"].attrs = {"units": "nm", "long_name": "leveled, registered height"}
    ds["valid"].attrs = {"long_name": "pixel interpolated from inside the frame"}
    keep = {k: v for k, v in leveled.coords.items() if k not in ("y", "x")}
    ds = ds.assign_coords(keep)
    ds = ds.assign_coords(registration_ok=("frame", t["ok"].values),
                          shift_dy_px=("frame", t["dy_px"].values),
                          shift_dx_px=("frame", t["dx_px"].values))
    ds["y"].attrs = {"units": "nm"}
    ds["x"].attrs = {"units": "nm"}
    return ds


# --------------------------------------------------------------------------- I/O wrappers
@one_blas_thread
def run_within(leveled_path, out, *, params: RegisterParams, step) -> dict[str, Any]:
    from ecafm.store import open_cube, write_cube

    lev = open_cube(leveled_path).load()
    res = estimate_within_cycle(lev, params=params)
    res.attrs["cycle"] = int(lev.attrs.get("cycle", -1))
    n_bad = int((res["flags"].values != 0).sum())
    log.info("cycle %s: %d frames, %d flagged", res.attrs["cycle"], lev.sizes["frame"], n_bad)
    return write_cube(res, out, step=step)


@one_blas_thread
def run_link(left_path, right_path, out, *, params: RegisterParams, step,
             before_path=None) -> dict[str, Any]:
    """:func:`estimate_link` of two leveled cycles (``before_path``: the cycle before the left
    one, for the skip link; None at the first boundary)."""
    from ecafm.store import open_cube, write_cube

    # opened lazily: estimate_link reads only the frames it links
    before = None if before_path is None else open_cube(before_path, dask=False)
    res = estimate_link(open_cube(left_path, dask=False), open_cube(right_path, dask=False), params=params,
                        before=before)
    return write_cube(res, out, step=step)


@one_blas_thread
def run_link_into(cube_path, cycle: int, out, *, params: RegisterParams, level: LevelParams,
                  step) -> dict[str, Any]:
    """:func:`estimate_link` into ``cycle`` from the cycle before it (plus the skip link from the
    one before that), read from the ingested cube.

    A link reads four frames of three cycles. They are leveled here one at a time, by the
    function :func:`ecafm.level.level_cycle` levels every frame with (``level``: its
    :class:`~ecafm.level.LevelParams`), so the values equal those of the leveled cubes and no
    cycle's job waits for another's. The data set's first cycle gets a link of its own, every
    kind unlinked, so that every cycle's job writes the same outputs.
    """
    from ecafm.level import cycle_segments, level_one, select_cycle
    from ecafm.store import open_cube, write_cube

    cube = open_cube(cube_path, dask=False)  # lazy: only the linked frames are read
    cycles = cycle_segments(cube)
    right = select_cycle(cube, cycle)  # names the cube's cycles when it has no such one
    earlier = cycles[: cycles.index(int(cycle))]  # the cycles before it that have frames
    left = select_cycle(cube, earlier[-1]) if earlier else None
    before = select_cycle(cube, earlier[-2]) if len(earlier) >= 2 else None
    res = estimate_link(left, right, params=params, before=before,
                        level=functools.partial(level_one, params=level))
    res.attrs.update(cycle=int(cycle), from_cycle=earlier[-1] if earlier else -1)
    if left is None:
        log.info("cycle %d is the data set's first: nothing to link it to", cycle)
    else:
        log.info("cycle %d linked to cycle %d: flags %s", cycle, earlier[-1],
                 [",".join(int_to_flags(int(f))) or "ok" for f in res["flags"].values])
    return write_cube(res, out, step=step)


@one_blas_thread
def run_compose(within_paths, link_paths, cube_path, out, table, *, step,
                loop_weight: float = RegisterParams.loop_weight,
                loop_fusion: str = RegisterParams.loop_fusion) -> dict[str, Any]:
    from ecafm.store import open_cube, write_cube, write_table

    within = [open_cube(p).load() for p in within_paths]
    links = [open_cube(p).load() for p in link_paths]
    cube = open_cube(cube_path)
    tf = compose_transforms(within, links, pixel_size_nm=tuple(cube.attrs["pixel_size_nm"]),
                            nx=cube.sizes["x"], loop_weight=loop_weight, fusion=loop_fusion)
    wi = xr.concat([w[["ref_frame", "dy", "dx", "error", "crlb", "peak_ratio"]] for w in within], dim="frame")
    df = tf[["dy_px", "dx_px", "dy_nm", "dx_nm", "error_px", "ok", "flags", "cycle_index"]].to_dataframe()
    df = df.join(wi.to_dataframe().rename(columns=lambda c: f"pair_{c}")).reset_index()
    df["flag_names"] = [",".join(int_to_flags(v)) for v in df["flags"]]
    df["row_shift_span_px"] = np.ptp(tf["shift_x"].values, axis=1)
    write_table(df, table, step=step)
    n_ok = int(tf["ok"].sum())
    log.info("composed %d frames (%d usable); common field %s px; max loop closure %.3f px",
             tf.sizes["frame"], n_ok, tf.attrs["common_field_px"],
             float(np.nanmax(tf["loop_closure_px"].values)) if np.isfinite(tf["loop_closure_px"]).any() else float("nan"))
    return write_cube(tf, out, step=step)


@one_blas_thread
def run_apply(leveled_path, transforms_path, out, *, step,
              order: int = RegisterParams.resample_order, first_path=None,
              tip_radius_nm: float = 0.0) -> dict[str, Any]:
    """:func:`apply_cycle` of one leveled cycle, written. With ``first_path`` (the leveled cube of
    the data set's first cycle) the cube also holds ``height_aligned``, the heights the segment
    stage compares (:func:`ecafm.segment.add_aligned`, tip radius ``tip_radius_nm``)."""
    from ecafm.store import open_cube, write_cube

    lev = open_cube(leveled_path)
    tf = open_cube(transforms_path).load()
    ds = apply_cycle(lev, tf, order=order)
    if first_path is not None:
        from ecafm.segment import add_aligned

        ds = add_aligned(ds, open_cube(first_path), tf, order=order, tip_radius_nm=tip_radius_nm)
    ds.attrs = {**lev.attrs, "stage": "register", "common_field_px": tf.attrs["common_field_px"]}
    return write_cube(ds, out, step=step)
