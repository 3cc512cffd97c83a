"""Sites: marker watershed of deposit footprints, overlap linking across cycles, tile grid.

Pure kernels (numpy, scipy, scikit-image). Label 0 is background everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi


def segment_sites(height: np.ndarray, mask: np.ndarray, *, marker_h: float = 2.0,
                  min_distance: int = 2, min_area: int = 4, smooth_px: float = 1.0) -> np.ndarray:
    """Split a deposit footprint into sites by a marker-controlled watershed.

    Parameters
    ----------
    height : ndarray, shape (ny, nx)
        Height above the reference (nm).
    mask : ndarray of bool, shape (ny, nx)
        Footprint to split (deposit pixels).
    marker_h : float
        Markers are the regional maxima of the (slightly smoothed) height with a dynamic of at
        least ``marker_h`` nm (h-maxima), so noise bumps on one deposit make no extra site.
    min_distance : int
        Markers closer than this (px) are merged (the taller one wins).
    min_area : int
        Sites smaller than this (px) are dropped.
    smooth_px : float
        Gaussian sigma (px) of the smoothing applied before finding markers.

    Returns
    -------
    ndarray of int32, shape (ny, nx)
        Site labels 1..n in raster order of their markers, 0 outside the mask.
    """
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    h = np.asarray(height, np.float64)
    m = np.asarray(mask, bool)
    if h.ndim != 2 or h.shape != m.shape:
        raise ValueError(f"height and mask must be 2-D of one shape, got {h.shape}, {m.shape}")
    if min_area > 1:
        m = remove_small_objects(m, max_size=int(min_area) - 1)
    if not m.any():
        return np.zeros(h.shape, np.int32)
    hf = np.where(np.isfinite(h) & m, h, 0.0)
    hs = ndi.gaussian_filter(hf, smooth_px) if smooth_px > 0 else hf
    hs = np.where(m, hs, 0.0)
    peaks = h_maxima(hs, marker_h).astype(bool) & m
    mk, n = ndi.label(peaks, structure=np.ones((3, 3)))
    if n and min_distance > 1:
        # merge markers closer than min_distance: keep the tallest of each close group
        cy, cx = np.array(ndi.center_of_mass(peaks, mk, range(1, n + 1))).T.reshape(2, -1)
        # over the marker pixels only: scipy argsorts every value it is given (1024^2: 0.2 s a call)
        on = mk > 0
        top = np.asarray(ndi.maximum(hs[on], mk[on], range(1, n + 1)))
        order = np.argsort(-top, kind="stable")
        # greedy, tallest first: a marker is kept unless a kept one lies closer than
        # min_distance (neighbour lists from a k-d tree instead of all pairs in Python)
        from scipy.spatial import cKDTree

        pts = np.column_stack([cy, cx])
        close: list[list[int]] = [[] for _ in range(n)]
        for a, b in cKDTree(pts).query_pairs(min_distance):
            if np.hypot(*(pts[a] - pts[b])) < min_distance:
                close[a].append(b)
                close[b].append(a)
        suppressed = np.zeros(n, bool)
        keep: list[int] = []
        for i in order:
            if not suppressed[i]:
                keep.append(int(i))
                suppressed[close[i]] = True
        lut = np.zeros(n + 1, np.int32)
        lut[np.asarray(sorted(keep)) + 1] = np.arange(1, len(keep) + 1)
        mk = lut[mk]
    # components of the mask without a marker get one at their highest pixel
    comp, nc = ndi.label(m)
    has = np.zeros(nc + 1, bool)
    has[comp[mk > 0]] = True
    nxt = int(mk.max())
    for c in np.flatnonzero(~has[1:]) + 1:
        idx = np.flatnonzero((comp == c).ravel())
        nxt += 1
        mk.ravel()[idx[np.argmax(hs.ravel()[idx])]] = nxt
    lab = watershed(-hs, markers=mk, mask=m).astype(np.int32)
    return relabel(drop_small(lab, min_area))


def segment_sites_growth(height: np.ndarray, mask: np.ndarray, growth: list[np.ndarray], *,
                         threshold: float | np.ndarray, marker_h: float = 2.0,
                         min_distance: int = 2, min_area: int = 4, smooth_px: float = 0.0
                         ) -> np.ndarray:
    """Sites tracked through the frames of a plating, then split at its peak.

    Caps are born at the start of a plating and grow (radius as the cube root of the charge);
    early on they are apart, but at the peak two overlapping caps add up to one concave bump
    whose only maximum can lie in the overlap, so a watershed of the peak alone merges them or
    hands the overlap to the wrong cap. Here the labels grow frame by frame: in each frame's
    growth map ``g`` (height gained since the start of the plating), the sites found so far are
    the markers of a watershed of ``-g`` over ``g > threshold`` (they only claim the ring of
    new ground around them), and h-maxima of ``g`` farther than ``min_distance`` from every
    site found so far start new sites. Finally the same step on ``height`` within ``mask`` (sites that did not grow in this
    plating, e.g. old deposits, get their own markers there).

    Parameters
    ----------
    height, mask : ndarray, shape (ny, nx)
        Height above the reference at the plating peak (nm) and the footprint to split.
    growth : list of ndarray, each (ny, nx)
        Height maps in time order (nm above the reference: before the plating, then each
        plating frame); ``g`` above is each of them.
    threshold : float or ndarray
        Height that counts as deposit (nm).
    marker_h, min_distance, min_area, smooth_px :
        As in :func:`segment_sites`.
    """
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    m_final = np.asarray(mask, bool)
    if min_area > 1:
        m_final = remove_small_objects(m_final, max_size=int(min_area) - 1)
    lab = np.zeros(m_final.shape, np.int32)
    disk = np.hypot(*np.mgrid[-min_distance:min_distance + 1,
                              -min_distance:min_distance + 1]) <= min_distance

    def step(surface: np.ndarray, m: np.ndarray, lab: np.ndarray) -> np.ndarray:
        v = np.where(np.isfinite(surface) & m, surface, 0.0)
        v = ndi.gaussian_filter(v, smooth_px) if smooth_px > 0 else v
        v = np.where(m, v, 0.0)
        taken = ndi.binary_dilation(lab > 0, structure=disk) if lab.any() else lab > 0
        peaks = h_maxima(v, marker_h).astype(bool) & m & ~taken
        new, n = ndi.label(peaks, structure=np.ones((3, 3)))
        mk = np.where(lab > 0, lab, np.where(new > 0, new + int(lab.max()), 0))
        if not mk.any():
            return lab
        return watershed(-v, markers=mk, mask=m | (lab > 0)).astype(np.int32)

    for g in growth:
        g = np.asarray(g, np.float64)
        m = (g > threshold) & m_final
        if min_area > 1:
            m = remove_small_objects(m, max_size=int(min_area) - 1)
        lab = step(g, m, lab)
    lab = np.where(m_final, lab, 0)
    lab = step(np.asarray(height, np.float64), m_final, lab)
    lab = np.where(m_final, lab, 0)
    # components of the mask without a site get one
    comp, nc = ndi.label(m_final)
    has = np.zeros(nc + 1, bool)
    has[comp[lab > 0]] = True
    missing = ~has[comp] & m_final
    lab = np.where(missing, comp + int(lab.max()), lab)
    return relabel(drop_small(lab, min_area))


def segment_sites_layers(height: np.ndarray, mask: np.ndarray, growth: list[np.ndarray], *,
                         threshold: float | np.ndarray, marker_h: float = 2.0,
                         min_distance: int = 2, min_area: int = 4, smooth_px: float = 0.0,
                         remnant_ratio: float = 0.5, neck_dynamic_px: float = 0.0,
                         taken_ratio: float = 2 / 3) -> np.ndarray:
    """Sites at a plating peak: the growth-tracked sites, with the caps this plating left alone
    split off as sites of their own.

    From the second cycle on, much of a plating peak's deposit is older material: dead Li and
    caps that sat the plating out, frozen since the last stripping. A growing cap next to them
    raises the height between them, so the peak's watershed merges a frozen cap into its
    growing neighbour, or several frozen caps into one (demo seed 0 at 1 nm: 118 of the 200
    true sites missed at the four peaks had not grown in that plating). The height before the
    plating (``growth[0]``, the previous stripping's end) shows those caps alone.

    Here the sites of :func:`segment_sites_growth` are kept where this plating grew at least
    as much as stood there before (``height - growth[0] >= growth[0]``: the material a pixel
    would be given to by the thickest-cap rule). The rest of the deposit, where the older
    material is the thicker, goes to the marker watershed of ``growth[0]``, except that a
    cap of that watershed is not a site of its own when more than ``remnant_ratio`` of its
    own height grew on its top (it is the remnant a regrowing site started from; its pixels
    stay with the growth-tracked sites). A growth-tracked site more than ``taken_ratio`` of
    whose area went to frozen caps was their site (the tracking labelled them in ``growth[0]``
    and let them claim the flank a neighbour later grew over); what is left of it is no site of
    its own: it goes to the growing sites it touches (a watershed of this plating's growth
    from them), or, touching none, to the fill below. Every site is one connected piece:
    pieces cut off by a frozen cap go to the neighbour they touch.

    Parameters
    ----------
    height, mask, growth, threshold, marker_h, min_distance, min_area, smooth_px :
        As in :func:`segment_sites_growth` (``growth[0]`` is the height before the plating).
    remnant_ratio : float
        Growth on a frozen cap's top, as a fraction of its height, above which the cap is the
        remnant of a regrowing site (growth below ``threshold`` always counts as none).
    neck_dynamic_px : float
        :func:`split_necks` of both layers' sites on their whole footprints, before the layers
        cut them (0: none). Splitting after the cut parts the cut shapes: on the demo preset at
        256 px, 25 of 184 sites at the last peak came from that, and site F1 rose 0.715 -> 0.753
        with the split moved here.
    taken_ratio : float
        Share of a growth-tracked site's area given to frozen caps above which its leftover is
        not a site (1: always a site). Two thirds: a site the frozen caps took less of is more
        often a growing cap partly on top of them, whose leftover is its true site (at 0.5, demo
        seed 60 lost 12 matched sites against 0.6); from 0.9 the spurious leftovers come back.
        Site F1 is flat from 0.6 to 0.75 (128 px sets within 0.002 in mean).
    """
    from skimage.segmentation import watershed

    m = np.asarray(mask, bool)
    kw = dict(marker_h=marker_h, min_distance=min_distance, min_area=min_area, smooth_px=smooth_px)
    lab = split_necks(segment_sites_growth(height, m, growth, threshold=threshold, **kw),
                      dynamic_px=neck_dynamic_px, min_area=min_area)
    if len(growth) < 2 or not lab.any():
        return lab
    h = np.asarray(height, np.float64)
    before = np.asarray(growth[0], np.float64)
    grew = h - before
    thr = np.broadcast_to(np.asarray(threshold, np.float64), h.shape)
    lab_b = split_necks(segment_sites(before, m & (before > thr), **kw), dynamic_px=neck_dynamic_px,
                        min_area=min_area)
    n_b = int(lab_b.max())
    if n_b == 0:
        return lab
    top = ndi.maximum_position(before, lab_b, np.arange(1, n_b + 1))
    own = np.zeros(n_b + 1, bool)
    own[1:] = [grew[i] <= max(thr[i], remnant_ratio * before[i]) for i in top]
    lab_b = drop_small(np.where(own[lab_b] & (before > grew) & m, lab_b, 0), min_area)
    if not lab_b.any():
        return lab
    # a growth-tracked site mostly given to frozen caps (taken_ratio): its leftover goes to the
    # growing sites it touches, over this plating's growth
    area = np.bincount(lab.ravel())
    gone = np.bincount(lab[lab_b > 0], minlength=area.size) > taken_ratio * area
    gone[0] = False
    if gone.any():
        grow_site = np.where(gone[lab] | (lab_b > 0), 0, lab)
        left = gone[lab] & (lab_b == 0)
        lab = watershed(-np.nan_to_num(grew), markers=grow_site, mask=left | (grow_site > 0))
    lab = np.where(lab_b > 0, lab_b + int(lab.max()), lab)
    # one connected piece per site (the largest); the others go to the sites they touch
    keep = np.zeros(lab.shape, bool)
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        comp, n = ndi.label(lab[sl] == k)
        keep[sl] |= comp == (np.bincount(comp.ravel())[1:].argmax() + 1) if n > 1 else comp > 0
    lab = watershed(-h, markers=np.where(keep, lab, 0), mask=m).astype(np.int32)
    return relabel(drop_small(lab, min_area))


def split_necks(lab: np.ndarray, *, dynamic_px: float = 0.7, min_area: int = 4) -> np.ndarray:
    """Split sites whose footprint is two or more overlapping discs joined by a neck.

    Two caps that overlap add up to one concave bump with a single height maximum, so no
    height watershed can part them; their footprint, though, is a union of discs whose distance
    transform has one maximum per disc (the classic split of touching particles). Within each
    site, regional maxima of the Euclidean distance to the site's edge with a dynamic of at
    least ``dynamic_px`` (h-maxima) become markers of a watershed of the negated distance.
    Pieces smaller than ``min_area`` go back to their neighbours (a site is never dropped).
    """
    from skimage.segmentation import watershed

    lab = np.asarray(lab, np.int32)
    if not lab.any() or dynamic_px <= 0:
        return lab
    # distance to the edge of each site (other sites count as edge: a neck between two
    # sites already split stays split)
    edge = np.ones((lab.shape[0] + 2, lab.shape[1] + 2), np.int32) * -1
    edge[1:-1, 1:-1] = lab
    inner = np.ones(edge.shape, bool)
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        inner &= np.roll(edge, (dy, dx), axis=(0, 1)) == edge
    inner = inner[1:-1, 1:-1] & (lab > 0)
    dist = ndi.distance_transform_edt(inner) + (lab > 0)
    peaks = h_maxima(dist, dynamic_px).astype(bool) & (lab > 0)
    mk, n = ndi.label(peaks, structure=np.ones((3, 3)))
    if n == 0:
        return lab
    # markers per site: only sites with two or more are split
    owner = np.zeros(n + 1, np.int64)
    owner[mk[peaks]] = lab[peaks]
    per_site = np.bincount(owner[1:], minlength=int(lab.max()) + 1)
    split = per_site >= 2
    split[0] = False
    if not split.any():
        return lab
    sel = split[lab]
    mk = np.where(sel & (mk > 0), mk + int(lab.max()), 0)
    # each site split separately: the watershed never crosses from one site into another
    pieces = watershed(-dist, markers=mk, mask=sel, connectivity=1)
    pieces = np.where(sel & (pieces > 0), pieces, 0)
    # a piece must stay inside its own site; small pieces merge back into the site's largest
    out = np.where(sel, 0, lab).astype(np.int64)
    nxt = int(lab.max()) + 1
    for site in np.flatnonzero(split):
        m = lab == site
        ids, cnt = np.unique(pieces[m], return_counts=True)
        keep = [(i, c) for i, c in zip(ids.tolist(), cnt.tolist(), strict=True) if i > 0 and c >= min_area]
        if len(keep) < 2:
            out[m] = site
            continue
        keep.sort(key=lambda z: -z[1])
        big = keep[0][0]
        for i, _ in keep:
            tgt = site if i == big else nxt
            nxt += i != big
            out[m & (pieces == i)] = tgt
        rest = m & (out == 0)
        out[rest] = site
    return relabel(out.astype(np.int32))


def h_maxima(image: np.ndarray, h: float) -> np.ndarray:
    """``skimage.morphology.h_maxima(image, h)`` of a 2-D float image (8-connected), same values,
    in about half the time.

    scikit-image's grey reconstruction argsorts the stacked seed and mask twice: once for the
    pixel order and once more, identically, inside ``rank_order`` for the ranks. That second
    sort was half of every call (bench-m segment job: 16 calls, 2.3 s of argsort out of 12.7 s).
    Here the order is sorted once and the ranks follow from it; the flood itself is
    scikit-image's own Cython ``reconstruction_loop``. If that private function is ever moved
    or changed, this falls back to the public ``h_maxima``.
    """
    image = np.asarray(image)
    try:
        from skimage.morphology._grayreconstruct import reconstruction_loop
    except ImportError:  # pragma: no cover - depends on the installed scikit-image
        reconstruction_loop = None
    if (reconstruction_loop is None or image.ndim != 2 or image.dtype != np.float64
            or min(image.shape) < 1 or h <= 0):
        from skimage.morphology import h_maxima as sk_h_maxima

        return sk_h_maxima(image, h)
    if h > np.ptp(image):
        return np.zeros(image.shape, np.uint8)
    # h_maxima's own shift: h plus the float resolution of each value
    resolution = 2 * np.finfo(image.dtype).resolution * np.abs(image)
    seed = image - h - resolution
    ny, nx = image.shape
    pad_value = seed.min()
    images = np.full((2, ny + 2, nx + 2), pad_value, np.float64)
    images[0, 1:-1, 1:-1] = seed
    images[1, 1:-1, 1:-1] = image
    isize = images.size
    sint = np.result_type(np.min_scalar_type(-isize), np.int32)
    uint = np.dtype(sint.char.upper())
    row = nx + 2
    nb = np.array([-row - 1, -row, -row + 1, -1, 1, row - 1, row, row + 1], sint)
    flat = images.reshape(-1)
    order = _stack_order(image, seed)
    if order is None:
        order = np.argsort(flat)  # the one sort (rank_order's argsort of the same array is identical)
    # ranks of the distinct values in ascending order (rank_order's result)
    srt = flat[order]
    step = np.empty(isize, uint)
    step[0] = 0
    np.cumsum(srt[1:] != srt[:-1], out=step[1:], dtype=uint)
    values = srt[np.r_[True, srt[1:] != srt[:-1]]]
    rank = np.empty(isize, uint)
    rank[order] = step
    index_sorted = order.astype(sint, copy=False)[::-1]  # dilation: largest first
    prev = np.full(isize, -1, sint)
    nxt = np.full(isize, -1, sint)
    prev[index_sorted[1:]] = index_sorted[:-1]
    nxt[index_sorted[:-1]] = index_sorted[1:]
    reconstruction_loop(rank, prev, nxt, nb, index_sorted[0], isize // 2)
    rec = values[rank[: isize // 2]].reshape(ny + 2, nx + 2)[1:-1, 1:-1]
    return ((image - rec) >= h).astype(np.uint8)


def _stack_order(image: np.ndarray, seed: np.ndarray) -> np.ndarray | None:
    """Ascending order of the padded (seed, image) stack of :func:`h_maxima`, from one argsort
    of ``image`` alone (half the values; ~40 -> ~25 ms at 512^2).

    ``seed = image - h - resolution`` is non-decreasing in ``image``, so the image's order sorts
    the seed too (checked; None when rounding breaks it, and the caller sorts the whole stack).
    The two sorted runs are merged by a stable argsort (linear for two runs); the border pads,
    all equal to ``seed.min()``, go first.
    """
    ny, nx = image.shape
    o = _argsort_floor(image.reshape(-1))
    ss = seed.reshape(-1)[o]
    if not (ss[1:] >= ss[:-1]).all():
        return None
    row = nx + 2
    plane = (ny + 2) * row
    pix = (o // nx + 1) * row + (o % nx + 1)  # flat offset of each sorted pixel in one padded plane
    merge = np.argsort(np.concatenate([ss, image.reshape(-1)[o]]), kind="stable")
    border = np.ones((ny + 2, nx + 2), bool)
    border[1:-1, 1:-1] = False
    pads = np.flatnonzero(border)
    return np.concatenate([pads, pads + plane, np.concatenate([pix, pix + plane])[merge]])


def _argsort_floor(z: np.ndarray) -> np.ndarray:
    """An ascending order of the flat array ``z``, with a zero floor placed rather than sorted.

    Every caller of :func:`h_maxima` feeds it a masked image: heights or distances inside the
    footprints, 0 outside, often half of the frame. numpy's default argsort (the AVX-512
    quicksort) slows down 2-6x on such runs of equal values (1024^2, half zeros: 198-318 ms
    against 49 ms for the other half alone). When at least 1/8 of the values are 0, the rest
    are sorted and the zeros (in index order) go where 0 falls among them.
    """
    zero = z == 0.0
    if np.count_nonzero(zero) < z.size // 8:
        return np.argsort(z)
    idx = np.flatnonzero(~zero)
    o = idx[np.argsort(z[idx])]
    k = int(np.searchsorted(z[o], 0.0))  # NaN sorts last, above 0
    return np.concatenate([o[:k], np.flatnonzero(zero), o[k:]])


def drop_small(lab: np.ndarray, min_area: int) -> np.ndarray:
    """Labels with fewer than ``min_area`` pixels set to background (0)."""
    if min_area <= 1:
        return lab
    small = np.bincount(lab.ravel()) < min_area
    small[0] = False
    return np.where(small[lab], 0, lab)


def relabel(lab: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n (order of first appearance in raster order), 0 kept."""
    lab = np.asarray(lab)
    ids, first = np.unique(lab.ravel(), return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    ids = ids[np.argsort(first, kind="stable")]
    lut = np.zeros(int(lab.max()) + 1 if lab.size else 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[lab]


def overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Overlap table of two label maps: rows (label_a, label_b, pixels), both labels > 0."""
    a = np.asarray(a).ravel().astype(np.int64)
    b = np.asarray(b).ravel().astype(np.int64)
    if a.shape != b.shape:
        raise ValueError("label maps differ in shape")
    sel = (a > 0) & (b > 0)
    if not sel.any():
        return np.zeros((0, 3), np.int64)
    key = a[sel] * (int(b.max()) + 1) + b[sel]
    u, cnt = np.unique(key, return_counts=True)
    return np.column_stack([u // (int(b.max()) + 1), u % (int(b.max()) + 1), cnt])


@dataclass
class Tracks:
    """Persistent site ids across cycles and the lineage events."""

    labels: list[np.ndarray]  #: per cycle, label map with persistent site ids
    birth_cycle: dict[int, int] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)  #: split child -> parent site
    family: dict[int, int] = field(default_factory=dict)  #: site -> family root (smallest id)
    merges: list[tuple[int, int, int]] = field(default_factory=list)  #: (cycle, kept, absorbed)
    splits: list[tuple[int, int, int]] = field(default_factory=list)  #: (cycle, parent, child)


def track_labels(per_cycle: list[np.ndarray], *, min_overlap: float = 0.2) -> Tracks:
    """Link per-cycle site label maps by overlap; births, merges, splits, families.

    A segment of cycle c continues the previous site it overlaps most (overlap counted when
    it covers at least ``min_overlap`` of the smaller of the two regions). A segment that
    overlaps several previous sites merges them (it keeps the id of its largest overlap; the
    others are absorbed and end). A previous site claimed by several segments splits: the
    largest overlap keeps the id, the others are new sites with that parent. A segment
    without overlap is a birth. Merged and split sites share a family (union-find, root =
    smallest id).

    Written here rather than taken from laptrack's ``OverLapTrack`` (the kept library for
    overlap tracking): that class prices every pair of labels of consecutive cycles through a
    Python callable (``scipy.spatial.distance.cdist``), about 40 us per pair. On demo seed 0's
    four cycles (62-110 sites each) it took 1.08 s against 6.6 ms here (laptrack 0.17.1,
    2026-11-26), and the cost grows with the product of the site counts, which bench-l's
    thousands of sites per cycle would turn into minutes. The rule here is also the one the
    lineage needs: overlap relative to the smaller region, so a small site grown into a large
    one links whatever its share of the large one.

    Parameters
    ----------
    per_cycle : list of ndarray of int, each (ny, nx)
        Labels of every cycle (independent numbering).
    """
    parent_uf: dict[int, int] = {}

    def find(i: int) -> int:
        while parent_uf[i] != i:
            parent_uf[i] = parent_uf[parent_uf[i]]
            i = parent_uf[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent_uf[max(ra, rb)] = min(ra, rb)

    tr = Tracks(labels=[])
    next_id = 1
    prev: np.ndarray | None = None
    for c, lab in enumerate(per_cycle):
        lab = np.asarray(lab)
        ids = [int(i) for i in np.unique(lab) if i > 0]
        out = np.zeros(lab.shape, np.int32)
        assign: dict[int, int] = {}
        if prev is not None and ids:
            area_p = np.bincount(prev.ravel(), minlength=int(prev.max()) + 1)
            area_c = np.bincount(lab.ravel(), minlength=int(lab.max()) + 1)
            ov = overlaps(prev, lab)
            ok = ov[:, 2] >= min_overlap * np.minimum(area_p[ov[:, 0]], area_c[ov[:, 1]])
            ov = ov[ok]
            # each current segment: its previous sites, largest overlap first
            by_cur: dict[int, list[tuple[int, int]]] = {}
            for p, q, n in ov:
                by_cur.setdefault(int(q), []).append((int(n), int(p)))
            claims: dict[int, list[tuple[int, int]]] = {}
            for q, lst in by_cur.items():
                lst.sort(reverse=True)
                claims.setdefault(lst[0][1], []).append((lst[0][0], q))
                for _, p in lst[1:]:
                    tr.merges.append((c, lst[0][1], p))
                    union(lst[0][1], p)
            for p, lst in claims.items():
                lst.sort(reverse=True)
                assign[lst[0][1]] = p
                for _, q in lst[1:]:
                    assign[q] = next_id
                    parent_uf[next_id] = next_id
                    tr.birth_cycle[next_id] = c
                    tr.parent[next_id] = p
                    tr.splits.append((c, p, next_id))
                    union(p, next_id)
                    next_id += 1
        for q in ids:
            if q not in assign:
                assign[q] = next_id
                parent_uf[next_id] = next_id
                tr.birth_cycle[next_id] = c
                next_id += 1
        if ids:
            lut = np.zeros(int(lab.max()) + 1, np.int32)
            for q, s in assign.items():
                lut[q] = s
            out = lut[lab]
        tr.labels.append(out)
        prev = out
    tr.family = {s: find(s) for s in parent_uf}
    return tr


def tile_grid(shape: tuple[int, int], tile_px: int) -> np.ndarray:
    """Segmentation-free tiles: label map of ``tile_px`` squares (1..n, raster order).

    Partial tiles at the right and bottom edges are kept (their area is in the tables).
    """
    if tile_px < 1:
        raise ValueError(f"tile_px must be >= 1, got {tile_px}")
    ny, nx = shape
    ty = np.arange(ny) // tile_px
    tx = np.arange(nx) // tile_px
    ntx = int(tx.max()) + 1
    return (ty[:, None] * ntx + tx[None, :] + 1).astype(np.int32)


def region_sums(values: np.ndarray, labels: np.ndarray, n: int | None = None,
                where: np.ndarray | None = None) -> np.ndarray:
    """Sum of ``values`` per label 0..n (NaN as 0), optionally only where ``where``."""
    lab = np.asarray(labels).ravel()
    v = np.nan_to_num(np.asarray(values, np.float64).ravel())
    if where is not None:
        v = np.where(np.asarray(where, bool).ravel(), v, 0.0)
    n = int(lab.max()) if n is None else int(n)
    return np.bincount(lab, weights=v, minlength=n + 1)[: n + 1]
