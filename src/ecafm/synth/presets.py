"""Parameters of the synthetic EC-AFM generator, the named presets and YAML overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the generator (units in the names; lengths nm, times s).

    The random streams of surface, nucleation, stripping, drift and noise are independent
    children of one seed, so presets that differ only in instrument settings (the ladder)
    share the same true surface history for the same seed.
    """

    # --- acquisition and schedule
    n_px: int = 128  #: pixels per side (square frames); pixel size = scan_size_nm / n_px
    scan_size_nm: float = 5000.0
    pad_frac: float = 0.25  #: margin simulated around the field of view (for drift), per side
    line_time_s: float = 0.5  #: time per scan line (trace only); frame time = n_px * line_time_s
    n_cycles: int = 4
    frames_per_half: int = 4
    n_pre_frames: int = 1  #: pristine frames during the initial rest (half_cycle 0, phase rest)
    frame_lag_s: float = 1.0  #: delay between a segment start and its first frame (and tail)
    rest_s: float = 60.0  #: unimaged rest after every half-cycle
    log_dt_s: float = 2.0  #: potentiostat sampling interval (>= frame_lag_s)
    current_density_mA_cm2: float = 0.05
    electrode_area_cm2: float = 1.0
    strip_max_factor: float = 1.5  #: stripping stops at cutoff or after this x plating time
    metal: str = "Li"
    # --- substrate
    sq_nm: float = 5.0  #: base RMS roughness
    corr_length_nm: float = 100.0
    rough_contrast: float = 0.6  #: relative modulation of local roughness (0 = uniform)
    rough_patch_nm: float = 1500.0  #: length scale of the roughness modulation
    n_porous_patches: int = 2
    porous_patch_radius_nm: float = 1000.0
    pit_density_um2: float = 6.0  #: pit density at a patch centre
    pit_radius_nm: float = 60.0
    pit_depth_nm: float = 15.0
    porosity_window_nm: float = 400.0  #: Gaussian sigma of the local pit-area fraction
    # --- nucleation (log-linear intensity in standardized roughness / porosity)
    nuc_density_um2: float = 1.5  #: first plating, at mean morphology
    nuc_later_density_um2: float = 0.3  #: later platings
    nuc_coef_roughness: float = 0.4
    nuc_coef_porosity: float = 0.6
    pristine_preference: float = 4.0  #: intensity ratio, never-covered vs covered surface
    # --- growth
    aspect_mean: float = 0.8  #: cap height / radius
    aspect_sd: float = 0.08
    min_radius_px: float = 1.5
    activity_sigma: float = 0.5  #: lognormal spread of the share of current a site takes
    participate_prob: float = 0.9  #: chance an alive site takes part in a cycle
    # --- stripping
    eff_mean: float = 0.93
    eff_sd: float = 0.03
    dead_b0: float = -2.0  #: logit of dead-Li conversion at mean covariates
    dead_b_porosity: float = 0.8
    dead_b_roughness: float = 0.4
    dead_b_size: float = -0.3
    dead_frac_min: float = 0.5  #: fraction of the site's volume left dead
    dead_frac_max: float = 0.9
    void_b0: float = -3.0  #: logit of void failure
    void_b_porosity: float = 0.8
    void_b_roughness: float = 0.3
    void_frac: float = 0.3  #: void volume opened at failure, fraction of the site's volume
    void_small_k: float = 0.05  #: extra void per stripped volume per SD of porosity above mean
    inact_b0: float = -3.0  #: logit of inactivation (site stops plating)
    inact_b_porosity: float = 0.4
    inact_b_roughness: float = 0.2
    sei_min_nm: float = 1.0
    sei_max_nm: float = 3.0
    class_min_nm: float = 0.5  #: thickness from which a pixel counts as deposit / void
    # --- instrument
    tip_shape: str = "paraboloid"  #: "paraboloid", "cone" or "none"
    tip_radius_nm: float = 10.0
    tip_half_angle_deg: float = 20.0
    noise_nm: float = 0.5  #: white noise SD
    pink_noise_nm: float = 0.0  #: 1/f noise SD (along the acquisition time)
    drift_rate_px_frame: tuple[float, float] = (0.3, 0.5)  #: linear drift (dy, dx) per frame time
    drift_rw_px: float = 0.4  #: random-walk SD per frame time
    creep_px: float = 0.0  #: lateral creep offset at row 0 (x; y gets half)
    creep_tau_rows: float = 12.0
    z_drift_nm_per_frame: float = 0.0
    tilt_nm: float = 0.0  #: SD of the height change across the frame from tilt
    line_offset_nm: float = 0.0
    scar_prob: float = 0.0  #: chance per frame of one scar
    scar_height_nm: float = 8.0
    # --- free text
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["drift_rate_px_frame"] = list(self.drift_rate_px_frame)
        d.pop("extra")
        return d

    @property
    def pixel_size_nm(self) -> float:
        return self.scan_size_nm / self.n_px

    @property
    def pad_px(self) -> int:
        return int(round(self.pad_frac * self.n_px)) + 4

    @property
    def frame_time_s(self) -> float:
        return self.n_px * self.line_time_s


_NO_ARTIFACTS = dict(tip_shape="none", noise_nm=0.0, pink_noise_nm=0.0,
                     drift_rate_px_frame=(0.0, 0.0), drift_rw_px=0.0, creep_px=0.0,
                     z_drift_nm_per_frame=0.0, tilt_nm=0.0, line_offset_nm=0.0, scar_prob=0.0)

_LADDER = [
    dict(_NO_ARTIFACTS),
    dict(_NO_ARTIFACTS, noise_nm=0.5, drift_rate_px_frame=(0.3, 0.5), drift_rw_px=0.4),
    dict(_NO_ARTIFACTS, noise_nm=0.5, drift_rate_px_frame=(0.3, 0.5), drift_rw_px=0.4,
         tip_shape="paraboloid", z_drift_nm_per_frame=2.0, tilt_nm=5.0),
    dict(noise_nm=0.8, pink_noise_nm=0.5, drift_rate_px_frame=(0.3, 0.5), drift_rw_px=0.4,
         tip_shape="paraboloid", z_drift_nm_per_frame=2.0, tilt_nm=5.0, creep_px=2.0,
         line_offset_nm=1.0, scar_prob=0.0),
    dict(noise_nm=1.0, pink_noise_nm=0.8, drift_rate_px_frame=(0.35, 0.55), drift_rw_px=0.4,
         tip_shape="cone", z_drift_nm_per_frame=3.0, tilt_nm=10.0, creep_px=3.0,
         line_offset_nm=1.5, scar_prob=0.3),
]

_NULL = dict(nuc_coef_roughness=0.0, nuc_coef_porosity=0.0, dead_b_porosity=0.0,
             dead_b_roughness=0.0, void_b_porosity=0.0, void_b_roughness=0.0,
             inact_b_porosity=0.0, inact_b_roughness=0.0, void_small_k=0.0)

PRESETS: dict[str, SynthParams] = {
    "demo": SynthParams(notes="demo: 4 cycles x 4 frames per half-cycle, 128 px"),
    "null": SynthParams(notes="no morphology effect", **_NULL),
    "bench-s": SynthParams(n_px=256, scan_size_nm=8000.0, n_cycles=10, frames_per_half=4,
                           line_time_s=0.5, notes="bench-s"),
    "bench-m": SynthParams(n_px=512, scan_size_nm=10000.0, n_cycles=20, frames_per_half=8,
                           line_time_s=0.25, pad_frac=0.2, drift_rate_px_frame=(0.15, 0.25),
                           drift_rw_px=0.3, notes="bench-m"),
    "bench-l": SynthParams(n_px=1024, scan_size_nm=20000.0, n_cycles=30, frames_per_half=8,
                           line_time_s=0.25, pad_frac=0.15, drift_rate_px_frame=(0.1, 0.2),
                           drift_rw_px=0.3, nuc_density_um2=0.5, nuc_later_density_um2=0.05,
                           notes="bench-l: streamed frame by frame"),
}
for _k, _kw in enumerate(_LADDER):
    PRESETS[f"ladder-{_k}"] = SynthParams(notes=f"ladder-{_k}: instrument artifacts level {_k}",
                                          **_kw)


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ValueError(f"override {name!r} must be a list of {len(default)} numbers")
        return tuple(float(v) for v in value)
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"override {name!r} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, str):
        return str(value)
    return value


def load_overrides(overrides: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """Overrides as a dict: None, a mapping, or the path of a YAML file holding a mapping."""
    if overrides is None:
        return {}
    if isinstance(overrides, (str, Path)):
        import yaml

        path = Path(overrides)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: synth overrides must be a YAML mapping of parameter: value")
        return dict(loaded)
    return dict(overrides)


def resolve_params(preset: str | SynthParams,
                   overrides: Mapping[str, Any] | str | Path | None = None) -> SynthParams:
    """The preset's parameters with overrides merged on top.

    Raises
    ------
    ValueError
        Unknown preset name, or override keys that are not parameters (all of them named).
    """
    if isinstance(preset, SynthParams):
        base = preset
    else:
        try:
            base = PRESETS[preset]
        except KeyError:
            raise ValueError(f"unknown synth preset {preset!r}; known presets: "
                             f"{', '.join(sorted(PRESETS))}") from None
    ov = load_overrides(overrides)
    known = {f.name: f for f in fields(SynthParams) if f.name != "extra"}
    unknown = sorted(set(ov) - set(known))
    if unknown:
        raise ValueError(f"unknown synth parameter(s) {unknown}; known parameters: "
                         f"{', '.join(sorted(known))}")
    changes = {k: _coerce(k, v, getattr(base, k)) for k, v in ov.items()}
    params = replace(base, **changes)
    validate(params)
    return params


def validate(p: SynthParams) -> None:
    """Raise ValueError on parameter values the generator cannot honour."""
    problems = []
    if p.n_px < 16:
        problems.append(f"n_px={p.n_px} must be >= 16")
    if p.n_cycles < 1 or p.frames_per_half < 1 or p.n_pre_frames < 1:
        problems.append("n_cycles, frames_per_half and n_pre_frames must be >= 1")
    if p.log_dt_s < p.frame_lag_s or p.frame_lag_s <= 0:
        problems.append("need 0 < frame_lag_s <= log_dt_s (frames must start after the first "
                        "log row of their segment)")
    if p.tip_shape not in ("paraboloid", "cone", "none"):
        problems.append(f"tip_shape={p.tip_shape!r} must be paraboloid, cone or none")
    if p.sei_min_nm > p.sei_max_nm or p.dead_frac_min > p.dead_frac_max:
        problems.append("min > max in sei or dead_frac range")
    if problems:
        raise ValueError("invalid synth parameters: " + "; ".join(problems))
