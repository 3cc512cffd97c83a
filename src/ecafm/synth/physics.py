"""Plating/stripping physics: schedule, charge, nucleation, growth, stripping, dead Li, voids.

The experiment is a sequence of segments (initial rest, then per cycle: plating, stripping),
each followed by an unimaged rest gap of ``rest_s``. Within a segment every site's material
changes in proportion to the charge passed in that segment, so the state at any time is
``start + delta * progress(t)`` with per-site arrays; rendering (see :mod:`render`) turns a
state into height maps.

Conservation: in a plating segment the simulation domain receives exactly the volume
``I_dom * T / charge_per_nm3`` (I_dom = current density x domain area), split over the
participating sites; in stripping the charge removes live Li (and substrate Li, opening
voids) only; dead Li never changes again.

Half-cycle convention (EC-Lab style): the initial rest is half_cycle 0 / cycle 0 with phase
"rest"; plating of cycle c is half_cycle 2c, stripping 2c+1; rest rows keep the number of the
half-cycle they follow. Cycle = half_cycle // 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ecafm.constants import get_metal
from ecafm.synth.presets import SynthParams
from ecafm.synth.surface import Substrate

#: event type codes of site_event_type
EVENT_NONE, EVENT_INACTIVATION, EVENT_DEAD, EVENT_VOID = 0, 1, 2, 3


@dataclass
class Segment:
    """One plating, stripping or initial-rest segment and its per-site changes."""

    kind: str  #: "rest", "plate", "strip"
    half_cycle: int
    cycle: int
    t0: float  #: segment start, s
    t1: float  #: segment end (then a rest gap until the next segment), s
    t_active: float  #: duration with current flowing, s
    q_scale: float  #: progress at the end of the segment (1, or < 1 if stripping timed out)
    frame_times: list[float]
    n_sites: int = 0
    m0: np.ndarray = field(default_factory=lambda: np.zeros(0))  #: material (live+dead) at t0
    dm: np.ndarray = field(default_factory=lambda: np.zeros(0))  #: change at full progress
    w0: np.ndarray = field(default_factory=lambda: np.zeros(0))  #: void volume at t0
    dw: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0))  #: dead volume in the segment
    d0: np.ndarray = field(default_factory=lambda: np.zeros(0))  #: dead volume before t0
    mmax0: np.ndarray = field(default_factory=lambda: np.zeros(0))  #: peak material before t0

    def progress(self, t: np.ndarray | float) -> np.ndarray:
        """Fraction of the segment's planned change done at time(s) t (0..q_scale)."""
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "rest" or self.t_active <= 0:
            return np.zeros_like(t)
        done = np.clip(t - self.t0, 0.0, self.t_active)
        return done / self.t_active * self.q_scale


@dataclass
class Physics:
    """Outcome of the physics simulation: segments, sites, per-cycle totals, charge clock."""

    params: SynthParams
    segments: list[Segment]
    t_end: float
    i_el_mA: float  #: electrode current magnitude
    area_ratio: float  #: simulation domain area / electrode area
    fov_ratio: float  #: field-of-view area / electrode area
    charge_t: np.ndarray  #: breakpoints of the cumulative electrode charge, s
    charge_q: np.ndarray  #: cumulative signed electrode charge at the breakpoints, C
    cut_times: dict[int, float]  #: stripping cutoff time per cycle
    # per site (index i = site id - 1), domain pixel coordinates
    site_y: np.ndarray
    site_x: np.ndarray
    site_aspect: np.ndarray
    site_void_r_px: np.ndarray
    site_birth_cycle: np.ndarray
    site_parent: np.ndarray
    site_event_cycle: np.ndarray
    site_event_type: np.ndarray
    site_porosity: np.ndarray
    site_roughness: np.ndarray
    site_size: np.ndarray
    site_plated: np.ndarray  #: (site, cycle) nm^3
    site_stripped: np.ndarray
    site_dead: np.ndarray
    site_void: np.ndarray
    site_p_dead: np.ndarray  #: (site, cycle) probability of dead conversion, NaN if not at risk
    site_z: np.ndarray  #: (site, cycle, 3) standardized porosity, roughness, size at risk
    merges: np.ndarray  #: (n, 3) cycle, site a, site b
    cycle_plated: np.ndarray
    cycle_stripped: np.ndarray
    cycle_void: np.ndarray
    cycle_dead: np.ndarray

    @property
    def n_sites(self) -> int:
        return len(self.site_y)

    def charge_C(self, t: np.ndarray | float) -> np.ndarray:
        """Cumulative signed electrode charge (positive = plating) at time(s) t, C."""
        return np.interp(t, self.charge_t, self.charge_q)

    def segment_at(self, t: float) -> Segment:
        """Segment whose [t0, next t0) contains t (the gap after a segment belongs to it)."""
        idx = 0
        for k, s in enumerate(self.segments):
            if s.t0 <= t:
                idx = k
        return self.segments[idx]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def cap_radius_nm(m: np.ndarray, aspect: np.ndarray) -> np.ndarray:
    """Footprint radius of a paraboloid cap of volume m and aspect H/R: V = pi R^3 k / 2."""
    return np.cbrt(2.0 * np.maximum(m, 0.0) / (np.pi * aspect))


def _standardize_log(v: np.ndarray) -> np.ndarray:
    lv = np.log(np.maximum(v, 1e-9))
    sd = lv.std()
    return (lv - lv.mean()) / sd if len(lv) > 1 and sd > 0 else np.zeros_like(lv)


def simulate_physics(p: SynthParams, sub: Substrate, rng_nuc: np.random.Generator,
                     rng_strip: np.random.Generator) -> Physics:
    """Run the event-level simulation of all cycles (no height rendering)."""
    metal = get_metal(p.metal)
    cpv = metal.charge_per_nm3_C
    n_dom = p.n_px + 2 * p.pad_px
    px = p.pixel_size_nm
    a_dom_cm2 = (n_dom * px) ** 2 * 1e-14
    a_fov_cm2 = (p.n_px * px) ** 2 * 1e-14
    i_el = p.current_density_mA_cm2 * p.electrode_area_cm2  # mA
    i_dom_A = p.current_density_mA_cm2 * 1e-3 * a_dom_cm2
    vol_rate = i_dom_A / cpv  # nm^3/s in the domain
    seg_dur = 2 * p.frame_lag_s + p.frames_per_half * p.frame_time_s
    por_z = sub.z_porosity(sub.porosity)
    rough_z = sub.z_roughness(sub.roughness)
    log_int = p.nuc_coef_roughness * rough_z + p.nuc_coef_porosity * por_z
    px_area_um2 = (px * 1e-3) ** 2

    # growing site arrays (lists then arrays)
    sy: list[float] = []
    sx: list[float] = []
    aspect: list[float] = []
    activity: list[float] = []
    eff: list[float] = []
    birth: list[int] = []
    n_c = p.n_cycles
    live = np.zeros(0)
    deadv = np.zeros(0)
    voidv = np.zeros(0)
    mmax = np.zeros(0)
    alive = np.zeros(0, dtype=bool)
    ev_cycle = np.zeros(0, dtype=np.int64)
    ev_type = np.zeros(0, dtype=np.int64)
    rows_plated: list[np.ndarray] = []
    rows_stripped: list[np.ndarray] = []
    rows_dead: list[np.ndarray] = []
    rows_void: list[np.ndarray] = []
    rows_p: list[np.ndarray] = []
    rows_z: list[np.ndarray] = []
    ever = np.zeros((n_dom, n_dom), dtype=bool)
    parent: list[int] = []
    merges: list[tuple[int, int, int]] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def grow(arr: np.ndarray, n: int, fill: float | int = 0) -> np.ndarray:
        out = np.full(n, fill, dtype=arr.dtype)
        out[: len(arr)] = arr
        return out

    segments: list[Segment] = []
    charge_t = [0.0]
    charge_q = [0.0]
    cut_times: dict[int, float] = {}
    t = 0.0
    # initial rest
    pre_dur = 2 * p.frame_lag_s + p.n_pre_frames * p.frame_time_s
    segments.append(Segment("rest", 0, 0, 0.0, pre_dur, 0.0, 0.0,
                            [p.frame_lag_s + k * p.frame_time_s for k in range(p.n_pre_frames)]))
    t = pre_dur + p.rest_s
    q = 0.0
    charge_t.append(t)
    charge_q.append(q)
    for c in range(n_c):
        # ---------------- nucleation
        dens = p.nuc_density_um2 if c == 0 else p.nuc_later_density_um2
        weight = np.where(ever, 1.0, p.pristine_preference if c > 0 else 1.0)
        lam = dens * px_area_um2 * np.exp(log_int) * weight
        counts = rng_nuc.poisson(lam)
        ny, nx = np.nonzero(counts)
        k_new = int(counts.sum())
        new_y = np.repeat(ny, counts[ny, nx]) + rng_nuc.uniform(0, 1, k_new) - 0.5
        new_x = np.repeat(nx, counts[ny, nx]) + rng_nuc.uniform(0, 1, k_new) - 0.5
        n_old = len(sy)
        sy.extend(new_y.tolist())
        sx.extend(new_x.tolist())
        aspect.extend(np.clip(rng_nuc.normal(p.aspect_mean, p.aspect_sd, k_new), 0.05, None)
                      .tolist())
        activity.extend(rng_nuc.lognormal(0.0, p.activity_sigma, k_new).tolist())
        eff.extend(np.clip(rng_nuc.normal(p.eff_mean, p.eff_sd, k_new), 0.5, 1.0).tolist())
        birth.extend([c] * k_new)
        parent.extend(range(n_old, n_old + k_new))
        n = len(sy)
        live, deadv, voidv, mmax = (grow(a, n, 0.0) for a in (live, deadv, voidv, mmax))
        alive = grow(alive, n, True)
        ev_cycle = grow(ev_cycle, n, -1)
        ev_type = grow(ev_type, n, EVENT_NONE)
        for rows in (rows_plated, rows_stripped, rows_dead, rows_void):
            rows.append(np.zeros(n))
        rows_p.append(np.full(n, np.nan))
        rows_z.append(np.full((n, 3), np.nan))
        act = np.asarray(activity)
        asp = np.asarray(aspect)
        # ---------------- plating
        part = alive & (rng_nuc.uniform(0, 1, n) < p.participate_prob)
        part[n_old:] = True
        v_total = vol_rate * (seg_dur)  # current flows during the whole segment
        share = np.where(part, act, 0.0)
        if share.sum() == 0:
            raise ValueError(f"cycle {c}: no site can take the plating current; raise "
                             "nuc_density_um2 or nuc_later_density_um2")
        dv = v_total * share / share.sum()
        m0 = live + deadv
        seg = Segment("plate", 2 * c, c, t, t + seg_dur, seg_dur, 1.0,
                      [t + p.frame_lag_s + k * p.frame_time_s for k in range(p.frames_per_half)],
                      n, m0.copy(), dv.copy(), voidv.copy(), np.zeros(n), np.zeros(n),
                      deadv.copy(), mmax.copy())
        segments.append(seg)
        live = live + dv
        mmax = np.maximum(mmax, live + deadv)
        rows_plated[c] = dv
        q += i_el * seg_dur / 1000.0
        t += seg_dur
        charge_t.append(t)
        charge_q.append(q)
        # footprints at the plating peak: ever-covered mask and merges
        yarr, xarr = np.asarray(sy), np.asarray(sx)
        r_px = cap_radius_nm(live + deadv, asp) / px
        r_px = np.where(live + deadv > 0, np.maximum(r_px, p.min_radius_px), 0.0)
        # footprints overlapping on the pixel grid merge families (union-find, logged)
        owner = np.zeros((n_dom, n_dom), dtype=np.int64)
        for i in np.flatnonzero(r_px > 0):
            r = r_px[i]
            y0, y1 = max(0, int(yarr[i] - r)), min(n_dom, int(yarr[i] + r) + 2)
            x0, x1 = max(0, int(xarr[i] - r)), min(n_dom, int(xarr[i] + r) + 2)
            gy, gx = np.ogrid[y0:y1, x0:x1]
            disk = (gy - yarr[i]) ** 2 + (gx - xarr[i]) ** 2 < r * r
            ever[y0:y1, x0:x1] |= disk
            patch = owner[y0:y1, x0:x1]
            for other in np.unique(patch[disk & (patch > 0)]).tolist():
                ra, rb = find(other - 1), find(int(i))
                if ra != rb:
                    merges.append((c, other, int(i) + 1))
                    parent[max(ra, rb)] = min(ra, rb)
            patch[disk] = i + 1
        if p.rest_s > 0:
            t += p.rest_s
            charge_t.append(t)
            charge_q.append(q)
        # ---------------- stripping: decide events, then strip
        strippers = np.flatnonzero(part & (live > 0))
        zp = sub.z_porosity(sub.porosity[_ij(yarr[strippers], n_dom), _ij(xarr[strippers], n_dom)])
        zr = sub.z_roughness(sub.roughness[_ij(yarr[strippers], n_dom),
                                           _ij(xarr[strippers], n_dom)])
        zs = _standardize_log(live[strippers])
        p_dead = _sigmoid(p.dead_b0 + p.dead_b_porosity * zp + p.dead_b_roughness * zr
                          + p.dead_b_size * zs)
        p_void = _sigmoid(p.void_b0 + p.void_b_porosity * zp + p.void_b_roughness * zr)
        p_inact = _sigmoid(p.inact_b0 + p.inact_b_porosity * zp + p.inact_b_roughness * zr)
        u = rng_strip.uniform(0, 1, (len(strippers), 3))
        frac = rng_strip.uniform(p.dead_frac_min, p.dead_frac_max, len(strippers))
        is_dead = u[:, 0] < p_dead
        is_void = ~is_dead & (u[:, 1] < p_void)
        is_inact = ~is_dead & ~is_void & (u[:, 2] < p_inact)
        rows_p[c][strippers] = p_dead
        rows_z[c][strippers] = np.column_stack([zp, zr, zs])
        effs = np.asarray(eff)[strippers]
        lv = live[strippers]
        d_strip = np.where(is_dead, (1 - frac) * lv,
                           np.where(is_void | is_inact, lv, effs * lv))
        new_dead = np.where(is_dead, frac * lv, 0.0)
        d_void = np.where(is_void, p.void_frac * lv, 0.0) + (
            p.void_small_k * np.clip(zp, 0, None) * d_strip)
        need = float((d_strip + d_void).sum())
        t_need = need / vol_rate if need > 0 else 0.0
        t_max = p.strip_max_factor * seg_dur
        t_act = min(t_need, t_max)
        q_scale = t_act / t_need if t_need > 0 else 0.0
        seg_len = max(seg_dur, t_act + p.frame_lag_s)
        dm = np.zeros(n)
        dw = np.zeros(n)
        dd = np.zeros(n)
        dm[strippers] = -d_strip
        dw[strippers] = d_void
        dd[strippers] = new_dead
        # dead Li is frozen from the start of the stripping: live part shrinks to 0
        seg = Segment("strip", 2 * c + 1, c, t, t + seg_len, t_act, q_scale,
                      [t + p.frame_lag_s + k * p.frame_time_s for k in range(p.frames_per_half)],
                      n, live + deadv, dm, voidv.copy(), dw, dd, deadv.copy(), mmax.copy())
        segments.append(seg)
        live = live.copy()
        live[strippers] = lv - d_strip * q_scale
        live[strippers[is_dead]] = np.where(q_scale >= 1.0, 0.0,
                                            live[strippers[is_dead]] - new_dead[is_dead])
        live = np.maximum(live, 0.0)
        deadv = deadv + dd
        voidv = voidv + dw * q_scale
        rows_stripped[c] = -dm * q_scale
        rows_dead[c] = dd
        rows_void[c] = dw * q_scale
        # events
        for mask, code, when in ((is_dead, EVENT_DEAD, c), (is_void, EVENT_VOID, c),
                                 (is_inact, EVENT_INACTIVATION, c + 1)):
            ids = strippers[mask]
            alive[ids] = False
            if when < n_c:
                ev_type[ids] = code
                ev_cycle[ids] = when
        cut_times[c] = t + t_act
        q -= i_el * t_act / 1000.0
        charge_t.append(t + t_act)
        charge_q.append(q)
        t += seg_len
        charge_t.append(t)
        charge_q.append(q)
        if p.rest_s > 0:
            t += p.rest_s
            charge_t.append(t)
            charge_q.append(q)

    n = len(sy)
    yarr, xarr = np.asarray(sy), np.asarray(sx)
    asp = np.asarray(aspect)

    def stack(rows: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((n, n_c))
        for k, r in enumerate(rows):
            out[: len(r), k] = r
        return out

    p_mat = np.full((n, n_c), np.nan)
    z_mat = np.full((n, n_c, 3), np.nan)
    for k in range(n_c):
        p_mat[: len(rows_p[k]), k] = rows_p[k]
        z_mat[: len(rows_z[k]), k] = rows_z[k]
    plated = stack(rows_plated)
    birth_arr = np.asarray(birth, dtype=np.int64)
    size = plated[np.arange(n), birth_arr]
    void_r = np.maximum(0.8 * cap_radius_nm(size, asp) / px, p.min_radius_px)
    for s in segments:  # pad per-site arrays of early segments to the final site count
        for name in ("m0", "dm", "w0", "dw", "dead", "d0", "mmax0"):
            setattr(s, name, grow(getattr(s, name), n, 0.0))
        s.n_sites = n
    roots = np.array([find(i) for i in range(n)], dtype=np.int64) + 1
    yi, xi = _ij(yarr, n_dom), _ij(xarr, n_dom)
    stripped = stack(rows_stripped)
    voids = stack(rows_void)
    dead = stack(rows_dead)
    t_all = np.asarray(charge_t)
    order = np.argsort(t_all, kind="stable")
    return Physics(
        params=p, segments=segments, t_end=t, i_el_mA=i_el,
        area_ratio=a_dom_cm2 / p.electrode_area_cm2, fov_ratio=a_fov_cm2 / p.electrode_area_cm2,
        charge_t=t_all[order], charge_q=np.asarray(charge_q)[order], cut_times=cut_times,
        site_y=yarr, site_x=xarr, site_aspect=asp, site_void_r_px=void_r,
        site_birth_cycle=birth_arr, site_parent=roots, site_event_cycle=ev_cycle,
        site_event_type=ev_type, site_porosity=sub.porosity[yi, xi],
        site_roughness=sub.roughness[yi, xi], site_size=size,
        site_plated=plated, site_stripped=stripped, site_dead=dead, site_void=voids,
        site_p_dead=p_mat, site_z=z_mat,
        merges=np.asarray(merges, dtype=np.int64).reshape(-1, 3),
        cycle_plated=plated.sum(0), cycle_stripped=stripped.sum(0), cycle_void=voids.sum(0),
        cycle_dead=dead.sum(0),
    )


def _ij(v: np.ndarray, n: int) -> np.ndarray:
    return np.clip(np.round(v).astype(np.int64), 0, n - 1)
