"""Render the true surface (height, class map, site labels) at a time from the physics state.

Every deposit is a paraboloid cap h = H (1 - rho^2 / R^2) whose footprint radius follows its
volume at a fixed aspect H/R (R >= ``min_radius_px``); H is scaled so that the cap's sum over
the pixel grid times the pixel area equals the site's volume exactly. Caps add up where
footprints overlap, so the rendered deposit volume of the domain equals the simulated volume.
Voids are negative caps under the site. SEI residue covers every pixel ever covered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecafm.synth.physics import Physics, Segment, cap_radius_nm
from ecafm.synth.surface import Substrate

#: class_map codes
SUBSTRATE, ACTIVE, DORMANT, DEAD, SEI, VOID = 0, 1, 2, 3, 4, 5
FLAG_MEANINGS = "substrate active_deposit dormant_deposit dead_li sei_residue void"


@dataclass
class State:
    """The true surface at one time on the simulation domain."""

    height: np.ndarray  #: nm
    deposit: np.ndarray | None = None  #: Li thickness (live + dead), nm
    class_map: np.ndarray | None = None
    label: np.ndarray | None = None


def site_volumes(seg: Segment, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Material (live + dead), void volume and peak material of every site at time t."""
    prog = float(seg.progress(t))
    m = np.maximum(seg.m0 + seg.dm * prog, 0.0)
    w = np.maximum(seg.w0 + seg.dw * prog, 0.0)
    return m, w, np.maximum(seg.mmax0, m)


def render(phys: Physics, sub: Substrate, t: float, *, t_start: float | None = None,
           full: bool = False, at: tuple[np.ndarray, np.ndarray, int] | None = None) -> State:
    """True surface at time t; with ``full``, also class map and labels.

    ``t_start`` (the frame start) decides which sites count as active: those whose volume
    changes between t_start and t.

    ``at = (oy, ox, pad)`` renders at a raster's sample positions instead of the domain's pixel
    centres: output pixel (r, c) is the domain position (pad + r + oy[r], pad + c + ox[r])
    (the instrument's per-line drift convention), one row per entry of ``oy``. Caps and voids
    are evaluated there exactly, with the heights scaled as on the pixel grid (so each cap is
    the same surface); the substrate and SEI fields are interpolated linearly. This is the
    truth on the grid a registered frame is resampled to: sampling the pixel-grid class map
    at those positions by nearest neighbour puts every boundary up to half a pixel off.
    """
    p = phys.params
    px = p.pixel_size_nm
    a_px = px * px
    n_dom = sub.height.shape[0]
    seg = phys.segment_at(t)
    m, w, mmax = site_volumes(seg, t)
    asp = phys.site_aspect
    r_px = np.where(m > 0, np.maximum(cap_radius_nm(m, asp) / px, p.min_radius_px), 0.0)
    r_ever = np.where(mmax > 0, np.maximum(cap_radius_nm(mmax, asp) / px, p.min_radius_px), 0.0)
    rv = np.where(w > 0, phys.site_void_r_px, 0.0)
    if at is None:
        shape = (n_dom, n_dom)
    else:
        oy, ox, pad = np.asarray(at[0], float), np.asarray(at[1], float), int(at[2])
        shape = (oy.size, oy.size)
        row_y = pad + np.arange(shape[0]) + oy  # increasing: drift moves < 1 px per line
        row_x0 = pad + ox
        cols = np.arange(shape[1], dtype=float)
    dep = np.zeros(shape)
    void = np.zeros(shape)
    ever = np.zeros(shape, dtype=bool)
    if full:
        t0 = seg.t0 if t_start is None else t_start
        changing = ((seg.dm != 0) | (seg.dw != 0)) & (float(seg.progress(t)) >
                                                       float(seg.progress(t0)))
        dead_tot = seg.d0 + (seg.dead if seg.kind == "strip" else 0.0)
        live = m - dead_tot
        cat = np.where(changing, ACTIVE, np.where(live > 1e-9 * np.maximum(m, 1), DORMANT, DEAD))
        th = {ACTIVE: np.zeros(shape), DORMANT: np.zeros(shape), DEAD: np.zeros(shape)}
        best = np.zeros(shape)
        label = np.zeros(shape, dtype=np.int32)
        vbest = np.zeros(shape)
        vlabel = np.zeros(shape, dtype=np.int32)
    # One pass per site over its bounding box. The per-site numpy calls are the generator's
    # main cost (bench-s: 183 renders of about a thousand sites), so the loop works on Python
    # floats and in place; the arithmetic, and so every output bit, is that of the plain form.
    sy, sx = phys.site_y.tolist(), phys.site_x.tolist()
    r_ever_l, rv_l, r_px_l, m_l, w_l = (np.asarray(a, float).tolist() for a in (r_ever, rv, r_px, m, w))
    cat_l = cat.tolist() if full else None
    # (volumes, radii, summed thickness, thickest so far, its label): caps, then voids
    kinds = ((m_l, r_px_l, dep, best, label), (w_l, rv_l, void, vbest, vlabel)) if full else \
        ((m_l, r_px_l, dep, None, None), (w_l, rv_l, void, None, None))
    for i in np.flatnonzero(r_ever > 0).tolist():
        syi, sxi, r_e, r_v = sy[i], sx[i], r_ever_l[i], rv_l[i]
        r_box = max(r_e, r_v)
        y0, y1 = max(0, int(syi - r_box)), min(n_dom, int(syi + r_box) + 2)
        x0, x1 = max(0, int(sxi - r_box)), min(n_dom, int(sxi + r_box) + 2)
        rho2_grid = (np.arange(y0, y1)[:, None] - syi) ** 2 + (np.arange(x0, x1)[None, :] - sxi) ** 2
        if at is None:
            sl, rho2 = (slice(y0, y1), slice(x0, x1)), rho2_grid
        else:
            r0 = int(row_y.searchsorted(syi - r_box - 1))
            r1 = int(row_y.searchsorted(syi + r_box + 1))
            if r1 <= r0:
                continue
            xo = row_x0[r0:r1]
            c0 = max(0, int(np.floor(sxi - r_box - xo.max())) - 1)
            c1 = min(shape[1], int(np.ceil(sxi + r_box - xo.min())) + 2)
            if c1 <= c0:
                continue
            sl = (slice(r0, r1), slice(c0, c1))
            rho2 = (row_y[r0:r1, None] - syi) ** 2 + (cols[None, c0:c1] + xo[:, None] - sxi) ** 2
        ev = ever[sl]
        ev |= rho2 < r_e ** 2
        for vols, radii, acc, top, lab_of in kinds:
            vol, rad = vols[i], radii[i]
            if not vol > 0:
                continue
            g_grid = np.maximum(1.0 - rho2_grid / rad ** 2, 0.0)
            g = g_grid if at is None else np.maximum(1.0 - rho2 / rad ** 2, 0.0)
            h = g * (vol / (a_px * g_grid.sum()))
            acc[sl] += h
            if full:
                if acc is dep:
                    th[cat_l[i]][sl] += h
                tv, lv = top[sl], lab_of[sl]
                better = h > tv
                np.copyto(lv, i + 1, where=better)
                np.maximum(tv, h, out=tv)
    if at is None:
        sub_h, sub_sei = sub.height, sub.sei
    else:
        from scipy import ndimage as ndi

        coords = np.stack(np.broadcast_arrays(row_y[:, None], cols[None, :] + row_x0[:, None]))
        sub_h = ndi.map_coordinates(sub.height, coords, order=1, mode="nearest")
        sub_sei = ndi.map_coordinates(sub.sei, coords, order=1, mode="nearest")
    height = sub_h - void + sub_sei * ever + dep
    if not full:
        return State(height=height, deposit=dep)
    cmin = p.class_min_nm
    net = dep + sub_sei * ever - void
    cls = np.full(shape, SUBSTRATE, dtype=np.uint8)
    cls[ever] = SEI
    cls[th[DORMANT] > cmin] = DORMANT
    cls[th[ACTIVE] > cmin] = ACTIVE
    cls[(th[DEAD] > cmin) & (th[DEAD] >= np.maximum(th[ACTIVE], th[DORMANT]))] = DEAD
    cls[net < -cmin] = VOID
    lab = np.where(dep > cmin, label, np.where(void > cmin, vlabel, 0)).astype(np.int32)
    return State(height=height, deposit=dep, class_map=cls, label=lab)
