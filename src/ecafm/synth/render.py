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
           full: bool = False) -> State:
    """True surface at time t; with ``full``, also class map and labels.

    ``t_start`` (the frame start) decides which sites count as active: those whose volume
    changes between t_start and t.
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
    dep = np.zeros((n_dom, n_dom))
    void = np.zeros((n_dom, n_dom))
    ever = np.zeros((n_dom, n_dom), dtype=bool)
    if full:
        t0 = seg.t0 if t_start is None else t_start
        changing = ((seg.dm != 0) | (seg.dw != 0)) & (float(seg.progress(t)) >
                                                       float(seg.progress(t0)))
        dead_tot = seg.d0 + (seg.dead if seg.kind == "strip" else 0.0)
        live = m - dead_tot
        cat = np.where(changing, ACTIVE, np.where(live > 1e-9 * np.maximum(m, 1), DORMANT, DEAD))
        th = {ACTIVE: np.zeros((n_dom, n_dom)), DORMANT: np.zeros((n_dom, n_dom)),
              DEAD: np.zeros((n_dom, n_dom))}
        best = np.zeros((n_dom, n_dom))
        label = np.zeros((n_dom, n_dom), dtype=np.int32)
        vbest = np.zeros((n_dom, n_dom))
        vlabel = np.zeros((n_dom, n_dom), dtype=np.int32)
    sy, sx = phys.site_y, phys.site_x
    for i in np.flatnonzero(r_ever > 0):
        r_box = max(r_ever[i], rv[i])
        y0, y1 = max(0, int(sy[i] - r_box)), min(n_dom, int(sy[i] + r_box) + 2)
        x0, x1 = max(0, int(sx[i] - r_box)), min(n_dom, int(sx[i] + r_box) + 2)
        gy, gx = np.ogrid[y0:y1, x0:x1]
        rho2 = (gy - sy[i]) ** 2 + (gx - sx[i]) ** 2
        ever[y0:y1, x0:x1] |= rho2 < r_ever[i] ** 2
        if m[i] > 0:
            g = np.clip(1.0 - rho2 / r_px[i] ** 2, 0.0, None)
            h = g * (m[i] / (a_px * g.sum()))
            dep[y0:y1, x0:x1] += h
            if full:
                th[int(cat[i])][y0:y1, x0:x1] += h
                sl = (slice(y0, y1), slice(x0, x1))
                better = h > best[sl]
                best[sl] = np.where(better, h, best[sl])
                label[sl] = np.where(better, i + 1, label[sl])
        if w[i] > 0:
            g = np.clip(1.0 - rho2 / rv[i] ** 2, 0.0, None)
            d = g * (w[i] / (a_px * g.sum()))
            void[y0:y1, x0:x1] += d
            if full:
                sl = (slice(y0, y1), slice(x0, x1))
                better = d > vbest[sl]
                vbest[sl] = np.where(better, d, vbest[sl])
                vlabel[sl] = np.where(better, i + 1, vlabel[sl])
    height = sub.height - void + sub.sei * ever + dep
    if not full:
        return State(height=height, deposit=dep)
    cmin = p.class_min_nm
    net = dep + sub.sei * ever - void
    cls = np.full((n_dom, n_dom), SUBSTRATE, dtype=np.uint8)
    cls[ever] = SEI
    cls[th[DORMANT] > cmin] = DORMANT
    cls[th[ACTIVE] > cmin] = ACTIVE
    cls[(th[DEAD] > cmin) & (th[DEAD] >= np.maximum(th[ACTIVE], th[DORMANT]))] = DEAD
    cls[net < -cmin] = VOID
    lab = np.where(dep > cmin, label, np.where(void > cmin, vlabel, 0)).astype(np.int32)
    return State(height=height, deposit=dep, class_map=cls, label=lab)
