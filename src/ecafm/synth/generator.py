"""Drive substrate, physics, rendering and instrument; yield frames one at a time.

Nothing here holds the whole cube: :meth:`Generator.frames` yields one :class:`FrameOut` per
frame, so large presets stream to disk (see :mod:`ecafm.synth.writer`).

Time conventions: ``time_s`` of a frame is the start of its first line on the log clock;
row r is scanned at ``time_s + r * line_time_s``. The truth of a frame (``height_true``,
``class_map``, ``site_label``, ``charge_C``) is the state at the END of the frame
(``time_end_s = time_s + n_px * line_time_s``), on the first frame's field of view.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ecafm.constants import get_metal
from ecafm.synth import instrument
from ecafm.synth.physics import Physics, simulate_physics
from ecafm.synth.presets import SynthParams
from ecafm.synth.render import render
from ecafm.synth.surface import Substrate, make_substrate

log = logging.getLogger(__name__)

ETA_PLATE_V = 0.03
ETA_STRIP_V = 0.03
CUTOFF_V = 1.0
RELAX_TAU_S = 120.0


@dataclass
class FrameOut:
    """One acquired frame and its truth (field-of-view arrays)."""

    index: int
    time_s: float
    time_end_s: float
    cycle: int
    half_cycle: int
    phase: str
    observed_nm: np.ndarray  #: (n, n) float64, what the instrument wrote
    height_true: np.ndarray  #: (n, n) float32
    height_observed_clean: np.ndarray  #: (n, n) float32, tip-dilated truth, no drift/noise
    class_map: np.ndarray  #: (n, n) uint8
    site_label: np.ndarray  #: (n, n) int32
    class_map_refgrid: np.ndarray  #: (n, n) uint8, at the first frame's sample positions
    site_label_refgrid: np.ndarray  #: (n, n) int32, same
    row_time_s: np.ndarray  #: (n,)
    drift_dy_px: np.ndarray  #: (n,)
    drift_dx_px: np.ndarray
    creep_dy_px: np.ndarray
    creep_dx_px: np.ndarray
    charge_C: float  #: cumulative electrode charge at the frame end
    charge_start_C: float
    deposit_volume_nm3: float  #: Li (live + dead) volume in the whole simulated domain, end
    deposit_volume_fov_nm3: float  #: same, inside the field of view


class Generator:
    """A synthetic EC-AFM experiment for one parameter set and seed (deterministic)."""

    def __init__(self, params: SynthParams, seed: int, *, preset: str = "custom"):
        self.params = params
        self.seed = int(seed)
        self.preset = preset
        streams = np.random.SeedSequence(self.seed).spawn(5)
        rng_sub, rng_nuc, rng_strip, rng_drift, self._seed_noise = (
            np.random.default_rng(s) for s in streams)
        self.metal = get_metal(params.metal)
        self.substrate: Substrate = make_substrate(params, rng_sub)
        self.physics: Physics = simulate_physics(params, self.substrate, rng_nuc, rng_strip)
        self.frame_segments = [(s, t) for s in self.physics.segments for t in s.frame_times]
        starts = np.array([t for _, t in self.frame_segments])
        self.drift = instrument.make_drift(params, starts, self.physics.t_end, rng_drift)
        self.tip = instrument.tip_structure(params)
        self._check_margin(starts)
        self.log_table = self._ec_log()

    # ------------------------------------------------------------------ checks
    def _check_margin(self, starts: np.ndarray) -> None:
        p = self.params
        t = np.concatenate([starts[:, None] + np.arange(p.n_px) * p.line_time_s]).ravel()
        dy, dx = self.drift.at(t)
        reach = max(np.abs(dy).max(), np.abs(dx).max()) + p.creep_px
        tip_px = 0 if self.tip is None else self.tip.shape[0] // 2
        if reach + tip_px + 3 > p.pad_px:
            raise ValueError(
                f"drift reaches {reach:.1f} px (+{tip_px} px tip) but the simulated margin is "
                f"{p.pad_px} px; raise pad_frac or lower drift_rate_px_frame / drift_rw_px")

    @property
    def n_frames(self) -> int:
        return len(self.frame_segments)

    # ------------------------------------------------------------------ electrochemistry
    def _row_state(self, tau: np.ndarray) -> pd.DataFrame:
        """Log values of rows at times tau (each row = the interval ending at it)."""
        ph = self.physics
        segs = ph.segments
        t0s = np.array([s.t0 for s in segs])
        te = np.maximum(tau - 1e-6, 0.0)
        k = np.clip(np.searchsorted(t0s, te, side="right") - 1, 0, len(segs) - 1)
        i_el = ph.i_el_mA
        cur = np.zeros(len(tau))
        pot = np.zeros(len(tau))
        rest = np.ones(len(tau), dtype=bool)
        hc = np.zeros(len(tau), dtype=np.int64)
        for j, s in enumerate(segs):
            sel = k == j
            if not sel.any():
                continue
            hc[sel] = s.half_cycle
            tt = te[sel]
            if s.kind == "plate":
                on = tt < s.t1
                cur[sel] = np.where(on, i_el, 0.0)
                rest[sel] = ~on
                e_on = -ETA_PLATE_V * (1 + 0.8 * np.exp(-(tt - s.t0) / 30.0))
                e_off = -ETA_PLATE_V * np.exp(-(tt - s.t1) / RELAX_TAU_S)
                pot[sel] = np.where(on, e_on, e_off)
            elif s.kind == "strip":
                cut = s.t0 + s.t_active
                on = tt < cut
                cur[sel] = np.where(on, -i_el, 0.0)
                rest[sel] = ~on
                e_cut = ETA_STRIP_V + (CUTOFF_V - ETA_STRIP_V) * (1.0 if s.q_scale >= 1 else 0.1)
                e_on = ETA_STRIP_V + (e_cut - ETA_STRIP_V) * np.exp(-(cut - tt) / 60.0)
                e_off = e_cut * np.exp(-(tt - cut) / RELAX_TAU_S)
                pot[sel] = np.where(on, e_on, e_off)
        return pd.DataFrame({
            "time_s": tau, "potential_V": pot, "current_mA": cur,
            "charge_C": ph.charge_C(tau), "half_cycle": hc, "cycle": hc // 2, "rest": rest,
        })

    def _ec_log(self) -> pd.DataFrame:
        p = self.params
        ph = self.physics
        bounds = sorted({0.0, ph.t_end, *ph.charge_t.tolist(), *ph.cut_times.values(),
                         *(s.t1 for s in ph.segments)})
        times = [0.0]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if b <= a:
                continue
            k = np.arange(1, int(np.floor((b - a) / p.log_dt_s + 1e-9)) + 1)
            times.extend((a + k * p.log_dt_s).tolist())
            if not times or times[-1] < b - 1e-9:
                times.append(b)
        tau = np.unique(np.round(np.asarray(times), 9))
        return self._row_state(tau)

    def frame_phase(self, t: float) -> tuple[int, int, str]:
        """cycle, half_cycle, phase of the first log row at or after t (as readers assign)."""
        d = self.log_table
        i = int(np.clip(np.searchsorted(d["time_s"].to_numpy(), t, side="left"), 0, len(d) - 1))
        row = d.iloc[i]
        cur = float(row["current_mA"])
        phase = "rest" if bool(row["rest"]) or cur == 0 else ("plate" if cur > 0 else "strip")
        return int(row["cycle"]), int(row["half_cycle"]), phase

    # ------------------------------------------------------------------ frames
    def frames(self) -> Iterator[FrameOut]:
        """Yield every frame in acquisition order (renders, dilates and scans one at a time)."""
        p = self.params
        ph = self.physics
        sub = self.substrate
        n, pad = p.n_px, p.pad_px
        fov = (slice(pad, pad + n), slice(pad, pad + n))
        rng_noise = np.random.default_rng(self._seed_noise.bit_generator.seed_seq)
        a_px = p.pixel_size_nm**2
        cache: tuple[float, np.ndarray] | None = None
        # where the first frame's lines were scanned: the grid every frame is registered to
        fs0 = instrument.frame_sampling(p, self.drift, self.frame_segments[0][1])
        for f, (seg, t_a) in enumerate(self.frame_segments):
            t_b = t_a + p.frame_time_s
            if cache is not None and cache[0] == t_a:
                coeffs_a = cache[1]
            else:
                st_a = render(ph, sub, t_a)
                coeffs_a = ndi.spline_filter(instrument.dilate(st_a.height, self.tip), order=3,
                                             mode="nearest")
            st_b = render(ph, sub, t_b, t_start=t_a, full=True)
            st_ref = render(ph, sub, t_b, t_start=t_a, full=True, at=(fs0.dy, fs0.dx, pad))
            dil_b = instrument.dilate(st_b.height, self.tip)
            prog_a, prog_b = float(seg.progress(t_a)), float(seg.progress(t_b))
            if prog_b > prog_a:
                coeffs_b = ndi.spline_filter(dil_b, order=3, mode="nearest")
            else:
                coeffs_b = coeffs_a  # nothing changed during the frame
            fs = instrument.frame_sampling(p, self.drift, t_a)
            alpha = ((seg.progress(fs.row_t) - prog_a) / (prog_b - prog_a)
                     if prog_b > prog_a else np.zeros(n))
            obs = instrument.acquire(p, coeffs_a, coeffs_b, alpha, fs, f, rng_noise)
            cache = (t_b, coeffs_b)
            cycle, half_cycle, phase = self.frame_phase(t_a)
            yield FrameOut(
                index=f, time_s=t_a, time_end_s=t_b, cycle=cycle, half_cycle=half_cycle,
                phase=phase, observed_nm=obs,
                height_true=st_b.height[fov].astype(np.float32),
                height_observed_clean=dil_b[fov].astype(np.float32),
                class_map=st_b.class_map[fov], site_label=st_b.label[fov],
                class_map_refgrid=st_ref.class_map, site_label_refgrid=st_ref.label,
                row_time_s=fs.row_t, drift_dy_px=fs.dy, drift_dx_px=fs.dx,
                creep_dy_px=fs.creep_dy, creep_dx_px=fs.creep_dx,
                charge_C=float(ph.charge_C(t_b)), charge_start_C=float(ph.charge_C(t_a)),
                deposit_volume_nm3=float(st_b.deposit.sum() * a_px),
                deposit_volume_fov_nm3=float(st_b.deposit[fov].sum() * a_px),
            )
            log.debug("frame %d / %d at t=%.1f s", f + 1, self.n_frames, t_a)

    # ------------------------------------------------------------------ static truth
    def attrs(self) -> dict:
        p = self.params
        coefs = {
            "nucleation_log_coef_roughness": p.nuc_coef_roughness,
            "nucleation_log_coef_porosity": p.nuc_coef_porosity,
            "dead_logit_intercept": p.dead_b0,
            "dead_logit_coef_porosity": p.dead_b_porosity,
            "dead_logit_coef_roughness": p.dead_b_roughness,
            "dead_logit_coef_size": p.dead_b_size,
            "void_logit_intercept": p.void_b0,
            "void_logit_coef_porosity": p.void_b_porosity,
            "void_logit_coef_roughness": p.void_b_roughness,
            "inactivation_logit_intercept": p.inact_b0,
            "inactivation_logit_coef_porosity": p.inact_b_porosity,
            "inactivation_logit_coef_roughness": p.inact_b_roughness,
        }
        ratios = {k.replace("_coef_", "_ratio_per_sd_").replace("logit", "odds")
                  .replace("nucleation_log", "nucleation_intensity"): float(np.exp(v))
                  for k, v in coefs.items() if "_coef_" in k}
        ph = self.physics
        return {
            "title": "ecafm synthetic EC-AFM ground truth",
            "preset": self.preset,
            "seed": self.seed,
            "metal": p.metal,
            "charge_per_nm3_C": self.metal.charge_per_nm3_C,
            "pixel_size_nm": p.pixel_size_nm,
            "pixel_size_convention": "scan size / N (AFMReader); array index [row=y, col=x]",
            "scan_size_nm": p.scan_size_nm,
            "n_px": p.n_px,
            "line_time_s": p.line_time_s,
            "noise_nm": p.noise_nm,
            "pink_noise_nm": p.pink_noise_nm,
            "tip_shape": p.tip_shape,
            "tip_radius_nm": p.tip_radius_nm,
            "tip_half_angle_deg": p.tip_half_angle_deg,
            "electrode_area_cm2": p.electrode_area_cm2,
            "current_density_mA_cm2": p.current_density_mA_cm2,
            "fov_area_fraction_of_electrode": ph.fov_ratio,
            "domain_area_fraction_of_electrode": ph.area_ratio,
            "positive_current_plates": 1,
            "standardization": (
                f"z_porosity = (porosity - {self.substrate.por_mean:.6g}) / "
                f"{self.substrate.por_sd:.6g}; z_roughness = (roughness - "
                f"{self.substrate.rough_mean:.6g}) / {self.substrate.rough_sd:.6g} (moments of "
                "the simulated domain); z_size = standardized log live volume of the sites at "
                "risk in that cycle"),
            "truth_time": "state at the end of each frame (time_end_s)",
            "drift_convention": ("observed pixel (r, c) shows true position (r + dy, c + dx) px "
                                 "of the first frame's field of view; includes creep"),
            "half_cycle_convention": ("EC-Lab style: initial rest is half_cycle 0 (phase rest); "
                                      "plating of cycle c = 2c, stripping = 2c+1; rests keep the "
                                      "number of the half-cycle they follow"),
            "event_type_codes": "0 none/censored, 1 inactivation, 2 dead-Li conversion, 3 void",
            "event_cycle_convention": ("dead/void: cycle whose stripping caused it; inactivation: "
                                       "first cycle without plating; -1 censored"),
            **coefs,
            **ratios,
        }
