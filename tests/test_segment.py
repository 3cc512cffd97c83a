"""Known-answer tests of the change, class and site kernels (inputs built so the answer is known)."""

from __future__ import annotations

import numpy as np
import pytest

from ecafm.kernels import change as kc
from ecafm.kernels import sites as ks


def _cap(shape, cy, cx, r, h):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return h * np.clip(1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2, 0, None)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_robust_sigma_ignores_changed_pixels(rng):
    d = rng.normal(0, 1.0, (128, 128))
    d[:, :50] += 30.0  # 39 % of the frame changed
    assert kc.robust_sigma(d) == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("sign,code", [(1, kc.GROW), (-1, kc.SHRINK)], ids=["grow", "shrink"])
def test_change_labels_recover_a_bump(rng, sign, code):
    shape = (96, 96)
    a = rng.normal(0, 1.0, shape)
    bump = _cap(shape, 40, 50, 10, 30.0)
    b = a + sign * bump + rng.normal(0, 1.0, shape)
    lab, sd = kc.change_labels(a, b, sigma_r=0.0, k=3, k_low=2, min_area=4)
    assert sd == pytest.approx(1.0, rel=0.15)
    truth = bump > 3.0
    assert (lab[truth] == code).mean() > 0.98
    assert (lab[~(bump > 0)] != 0).sum() <= 3  # no false changes outside the bump


def test_min_area_removes_small_changes(rng):
    a = np.zeros((64, 64))
    b = a.copy()
    b[10, 10] = 50.0  # one pixel (smaller than the tip footprint)
    b[30:34, 30:34] = 50.0  # 16 px
    a += rng.normal(0, 0.5, a.shape)
    b += rng.normal(0, 0.5, b.shape)
    lab, _ = kc.change_labels(a, b, sigma_r=0.0, min_area=5)
    assert lab[10, 10] == kc.STATIC
    assert (lab[30:34, 30:34] == kc.GROW).all()


def test_slope_term_suppresses_fake_change_from_misregistration(rng):
    """A 0.3 px misregistration of a 20 nm/px slope fakes 6 nm of change: tau must know it."""
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    surf = lambda x: 20.0 * np.sin(x / 6.0) * 6.0  # noqa: E731  slope up to 20 nm/px
    a = surf(xx) + rng.normal(0, 0.5, xx.shape)
    b = surf(xx + 0.3) + rng.normal(0, 0.5, xx.shape)
    naive, _ = kc.change_labels(a, b, sigma_r=0.0, sigma_d=0.7)
    aware, _ = kc.change_labels(a, b, sigma_r=0.3, sigma_d=0.7)
    assert (naive != 0).mean() > 0.2
    assert (aware != 0).mean() < 0.01


def test_change_labels_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        kc.change_labels(np.zeros((4, 4)), np.zeros((4, 5)), sigma_r=0.1)
    with pytest.raises(ValueError, match="k_low"):
        kc.change_labels(np.zeros((4, 4)), np.zeros((4, 4)), sigma_r=0.1, k=2, k_low=3)
    with pytest.raises(ValueError, match="2-D"):
        kc.change_labels(np.zeros(4), np.zeros(4), sigma_r=0.1)


@pytest.mark.parametrize("min_area", [1, 2, 4, 9])
def test_hysteresis_regions_equal_scikit_image_threshold_then_small_object_removal(rng, min_area):
    """One labelling gives scikit-image's hysteresis followed by its small-object removal."""
    from scipy import ndimage as ndi
    from skimage.filters import apply_hysteresis_threshold
    from skimage.morphology import remove_small_objects

    z = ndi.gaussian_filter(rng.normal(size=(120, 90)), 1.0) * 4
    z[5:9, 5:40] = np.nan  # non-finite differences are never changed
    for low, high in ((1.5, 3.0), (0.5, 0.8), (2.0, 2.0), (3.0, 1.0)):
        ref = apply_hysteresis_threshold(z, low, high)
        if min_area > 1:
            ref = remove_small_objects(ref, max_size=min_area - 1)
        ours = kc.hysteresis_regions(z, low, high, min_area=min_area)
        assert ours.dtype == bool
        np.testing.assert_array_equal(ours, ref)
        assert 0 < ref.sum() < ref.size  # a comparison of two non-trivial maps
    # regions below min_area that reach the high threshold are dropped
    assert kc.hysteresis_regions(z, 1.5, 3.0, min_area=1).sum() > kc.hysteresis_regions(
        z, 1.5, 3.0, min_area=9).sum()


def test_state_classes_first_match_wins():
    h_ref = np.zeros((1, 7))
    h = np.array([[0.5, -10, 10, 10, 10, 2.0, 10]])
    unc = np.array([[0, 0, 0, 0, 0, 0, 1]], bool)
    active = np.array([[0, 1, 1, 1, 0, 0, 1]], bool)
    residue = np.array([[0, 1, 1, 0, 0, 0, 1]], bool)
    out = kc.state_classes(h, h_ref, tau_ref=1.0, film_nm=4.0, uncertain=unc, active=active,
                           residue=residue)
    assert out.tolist() == [[kc.SUBSTRATE, kc.VOID, kc.INACTIVE_RESIDUE, kc.ACTIVE_DEPOSIT,
                             kc.DORMANT_DEPOSIT, kc.SUBSTRATE, kc.UNCERTAIN]]
    # a film as thick as film_nm plus less than tau_ref of noise is not a deposit
    film = kc.state_classes(np.array([[4.5, 5.5]]), np.zeros((1, 2)), tau_ref=1.0, film_nm=4.0,
                            uncertain=np.zeros((1, 2), bool), active=np.ones((1, 2), bool),
                            residue=np.zeros((1, 2), bool))
    assert film.tolist() == [[kc.SUBSTRATE, kc.ACTIVE_DEPOSIT]]


def test_align_to_reference_removes_offset_tilt_and_line_offsets(rng):
    ref = rng.normal(0, 1.0, (64, 64))
    yy, xx = np.mgrid[0:64, 0:64]
    h = ref + 5.0 + 0.1 * xx - 0.05 * yy + np.repeat(rng.normal(0, 2, 64)[:, None], 64, 1)
    h[20:40, 20:40] += 50.0  # a deposit must not bias the fit
    out = kc.align_to_reference(h, ref)
    bg = np.ones(h.shape, bool)
    bg[20:40, 20:40] = False
    assert np.abs((out - ref)[bg]).max() < 0.05


def test_rectify_rows_is_exact_for_growth_linear_in_charge():
    ny, nx = 8, 5
    rate = np.linspace(1, 2, nx)[None, :]  # nm per C at every pixel
    q_a = 10 + np.arange(ny) * 0.5  # charge when each row of frame a was scanned
    q_b = q_a + 4.0
    a, b = rate * q_a[:, None], rate * q_b[:, None]
    end_a = kc.rectify_rows(a, b, q_a, q_b, 14.0)
    np.testing.assert_allclose(end_a, rate * 14.0 * np.ones((ny, 1)))
    end_b = kc.rectify_rows(b, a, q_b, q_a, 18.5, max_factor=2.0)  # extrapolate the last frame
    np.testing.assert_allclose(end_b, rate * 18.5 * np.ones((ny, 1)))


def test_watershed_splits_touching_caps_and_keeps_single_ones():
    shape = (64, 64)
    h = _cap(shape, 20, 20, 8, 40) + _cap(shape, 20, 33, 8, 40) + _cap(shape, 48, 48, 6, 30)
    lab = ks.segment_sites(h, h > 1.0, marker_h=2.0, min_distance=3, min_area=4)
    assert lab.max() == 3
    assert lab[20, 20] != lab[20, 33]
    assert len({lab[20, 20], lab[20, 33], lab[48, 48]}) == 3


def test_neck_split_parts_overlapping_discs_and_leaves_single_shapes():
    yy, xx = np.mgrid[0:40, 0:60]
    a = np.hypot(yy - 20, xx - 18) <= 7
    b = np.hypot(yy - 20, xx - 29) <= 7  # centres 11 px apart, radius 7: a neck of 2 x 5.7 px
    lab = np.zeros((40, 60), np.int32)
    lab[a | b] = 1
    single = np.hypot(yy - 20, xx - 50) <= 6
    lab[single] = 2
    out = ks.split_necks(lab, dynamic_px=0.5, min_area=4)
    assert out.max() == 3
    assert out[20, 18] != out[20, 29]
    assert len(np.unique(out[single])) == 1 and out[20, 50] not in (out[20, 18], out[20, 29])
    # each piece is its disc up to the shared lens (split at the bisector x = 23.5)
    for centre, half in ((18, xx <= 23), (29, xx >= 24)):
        piece = out == out[20, centre]
        truth = (a | b) & half
        assert (piece & truth).sum() / (piece | truth).sum() > 0.9
    # an ellipse has no neck: one site; a disabled split changes nothing
    ell = np.zeros((40, 60), np.int32)
    ell[((yy - 20) / 6.0) ** 2 + ((xx - 30) / 14.0) ** 2 <= 1] = 1
    assert ks.split_necks(ell, dynamic_px=0.5).max() == 1
    np.testing.assert_array_equal(ks.split_necks(lab, dynamic_px=0), lab)


def test_watershed_ignores_noise_bumps(rng):
    h = _cap((48, 48), 24, 24, 12, 50) + rng.normal(0, 0.3, (48, 48))
    assert ks.segment_sites(h, h > 2.0, marker_h=2.0).max() == 1


@pytest.mark.parametrize("kind", ["smooth", "plateaus", "masked", "flat", "distance"])
def test_h_maxima_matches_scikit_image(rng, kind):
    """The one-sort h-maxima gives scikit-image's values on smooth, tied, masked and flat images."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima as sk_h_maxima

    img = ndi.gaussian_filter(rng.normal(size=(97, 131)), 3) * 40
    if kind == "plateaus":  # many ties: values on a 0.5 grid
        img = np.round(img * 2) / 2
    elif kind == "masked":  # deposits on a zero floor, as segment_sites feeds it
        img = np.where(img > 2, img, 0.0)
    elif kind == "flat":
        img = np.full((20, 30), 3.0)
    elif kind == "distance":  # split_necks: distance transform of two overlapping discs
        yy, xx = np.mgrid[:60, :80]
        discs = (np.hypot(yy - 30, xx - 28) < 14) | (np.hypot(yy - 30, xx - 50) < 12)
        img = ndi.distance_transform_edt(discs) + discs
    for h in (0.7, 2.0, 5.0):
        ours = ks.h_maxima(img, h)
        ref = sk_h_maxima(img, h)
        assert ours.dtype == ref.dtype
        np.testing.assert_array_equal(ours, ref)
    if kind in ("smooth", "masked"):
        assert ks.h_maxima(img, 2.0).sum() > 0  # the comparison is not between two empty maps
        # and it went through the merged order (one sort of the image; for the masked image,
        # of its non-zero part), not the whole-stack sort
        seed = img - 2.0 - 2 * np.finfo(float).resolution * np.abs(img)
        order = ks._stack_order(img, seed)
        stack = np.full((2, img.shape[0] + 2, img.shape[1] + 2), seed.min())
        stack[0, 1:-1, 1:-1], stack[1, 1:-1, 1:-1] = seed, img
        np.testing.assert_array_equal(stack.reshape(-1)[order], np.sort(stack, axis=None))


def test_argsort_floor_places_the_zero_floor_among_sorted_values(rng):
    """The zero floor of a masked image is placed, not sorted: still an ascending order, with
    negative values below it, NaN last, and -0.0 counted with the floor."""
    z = np.where(rng.random(5000) < 0.6, 0.0, rng.normal(0, 3, 5000))
    z[:7] = -0.0
    z[10:13] = np.nan
    o = ks._argsort_floor(z)
    np.testing.assert_array_equal(np.sort(o), np.arange(z.size))  # a permutation
    np.testing.assert_array_equal(z[o], np.sort(z))  # ascending, NaN last
    zeros = o[z[o] == 0]
    np.testing.assert_array_equal(zeros, np.flatnonzero(z == 0))  # the floor in index order
    assert (z < 0).any() and (z[o][: (z < 0).sum()] < 0).all()
    few = rng.normal(size=300)  # fewer than 1/8 zeros: a plain argsort
    np.testing.assert_array_equal(ks._argsort_floor(few), np.argsort(few))


def test_tracking_births_merges_splits_families():
    a = np.zeros((20, 40), np.int32)
    a[2:8, 2:8] = 1  # site A
    a[2:8, 10:16] = 2  # site B
    a[12:18, 2:16] = 3  # site C (will split)
    b = np.zeros_like(a)
    b[2:8, 2:16] = 5  # A and B merged
    b[12:18, 2:8] = 1  # C, left part
    b[12:18, 10:16] = 2  # C, right part (split)
    b[2:8, 30:36] = 9  # new nucleus
    tr = ks.track_labels([a, b])
    l0, l1 = tr.labels
    assert set(np.unique(l0)) == {0, 1, 2, 3}
    assert l1[4, 4] in (1, 2)  # merged segment keeps one of the merged ids
    assert tr.merges and tr.merges[0][0] == 1
    assert len(tr.splits) == 1 and tr.splits[0][1] == 3
    child = tr.splits[0][2]
    assert tr.family[child] == tr.family[3] == 3
    assert tr.family[1] == tr.family[2] == 1
    new = l1[4, 32]
    assert tr.birth_cycle[int(new)] == 1 and tr.family[int(new)] == int(new)


def test_tile_grid_and_region_sums():
    t = ks.tile_grid((10, 7), 4)
    assert t.max() == 3 * 2 and t[0, 0] == 1 and t[9, 6] == 6
    s = ks.region_sums(np.ones((10, 7)), t)
    assert s[1:].tolist() == [16, 12, 16, 12, 8, 6]
    with pytest.raises(ValueError, match="tile_px"):
        ks.tile_grid((4, 4), 0)


def test_growth_tracking_splits_caps_that_merge_at_the_peak(rng):
    """Two paraboloid caps born apart overlap at the peak: their sum has one maximum in the
    overlap, but tracked through the plating frames they stay two sites with the right owner."""
    shape = (48, 64)
    caps = [(24, 22, 6.0, 0.8), (24, 34, 8.0, 0.8)]  # cy, cx, final radius (px), aspect

    def frame(f):
        hs = [_cap(shape, cy, cx, r * f ** (1 / 3), 40.0 * a * r * f ** (1 / 3))
              for cy, cx, r, a in caps]
        return sum(hs), np.argmax(np.stack([np.zeros(shape), *hs]), axis=0)

    frames = [frame(f)[0] + rng.normal(0, 0.5, shape) for f in (0.25, 0.5, 0.75, 1.0)]
    peak, truth = frame(1.0)
    before = rng.normal(0, 0.5, shape)
    lab = ks.segment_sites_growth(frames[-1], frames[-1] > 4, [before, *frames], threshold=4.0,
                                  marker_h=2.0, min_distance=2, min_area=4)
    assert lab.max() == 2
    inside = truth > 0
    agree = max((lab[inside] == truth[inside]).mean(),
                (lab[inside] == 3 - truth[inside]).mean())
    assert agree > 0.9


def _matched(lab, truth):
    """True sites matched one-to-one at IoU >= 0.5 (the score's matching)."""
    from ecafm.score import _match_sites

    return len(_match_sites(truth, lab, 0.5))


def _frozen_and_growing(frozen, grow, rng):
    """Plating frames (a quarter, half, three quarters and all of the charge) of a cap growing
    beside a frozen one, the height before the plating, the true sites at the peak (1 frozen, 2
    growing, by the thicker cap) and the partition's keywords."""
    shape = frozen.shape
    frames = [frozen + grow(f) + rng.normal(0, 0.5, shape) for f in (0.25, 0.5, 0.75, 1.0)]
    before = frozen + rng.normal(0, 0.5, shape)
    truth = np.where(frozen >= grow(1.0), 1, 2) * ((frozen + grow(1.0)) > 4)
    return frames, before, truth, dict(threshold=4.0, marker_h=2.0, min_distance=2, min_area=4)


def test_layers_give_a_frozen_cap_its_own_site_next_to_a_growing_one(rng):
    """A dead cap left by the last stripping and a new cap growing on its flank: the growing
    cap never has a maximum of its own early in the plating, so the growth tracking hands it to
    the frozen cap; the height before the plating shows the frozen cap alone."""
    shape = (48, 64)
    frozen = _cap(shape, 24, 24, 9.0, 80.0)

    def grow(f):  # 6 px away: early on, the sum of the two has its one maximum in the overlap
        return _cap(shape, 24, 30, 8.0 * f ** (1 / 3), 70.0 * f ** (1 / 3))

    frames, before, truth, kw = _frozen_and_growing(frozen, grow, rng)
    old = ks.segment_sites_growth(frames[-1], frames[-1] > 4, [before, *frames], **kw)
    assert _matched(old, truth) == 1  # the failure this partition exists for
    lab = ks.segment_sites_layers(frames[-1], frames[-1] > 4, [before, *frames], **kw)
    assert lab.max() == 2
    assert _matched(lab, truth) == 2


def test_layers_keep_a_site_that_regrows_from_its_remnant_in_one_piece(rng):
    """A cap stripped to a steep remnant regrows: the growth is a ring around the remnant (the
    remnant is thicker than the growth at the centre), yet it is one site, not a remnant site
    inside a ring split in pieces."""
    shape = (48, 48)
    remnant = _cap(shape, 24, 24, 5.0, 60.0)  # aspect 12 nm/px, about that of the full cap
    full = _cap(shape, 24, 24, 8.0, 100.0)
    assert (remnant > full - remnant).any()  # the remnant is the thicker layer at the centre
    frames = [remnant + f * (full - remnant) + rng.normal(0, 0.5, shape)
              for f in (0.25, 0.5, 0.75, 1.0)]
    before = remnant + rng.normal(0, 0.5, shape)
    lab = ks.segment_sites_layers(frames[-1], frames[-1] > 4, [before, *frames], threshold=4.0,
                                  marker_h=2.0, min_distance=2, min_area=4)
    assert lab.max() == 1
    assert _matched(lab, (full > 4).astype(int)) == 1
    # without the remnant check, the remnant would be a site of its own
    split = ks.segment_sites_layers(frames[-1], frames[-1] > 4, [before, *frames], threshold=4.0,
                                    marker_h=2.0, min_distance=2, min_area=4, remnant_ratio=10.0)
    assert split.max() >= 2


def test_layers_give_the_flank_a_growing_cap_covers_to_it_not_to_a_site_of_its_own(rng):
    """A frozen cap on the rim of a big growing cap: its growth-tracked label, started in the
    height before the plating, also claims the growing cap's flank over it. Once the frozen part
    is a site of its own, that flank is most of nothing: it joins the cap that grew over it."""
    shape = (48, 64)
    frozen = _cap(shape, 24, 39, 8.0, 100.0)

    def grow(f):  # 15 px from the frozen cap, which sits on its rim at the peak
        return _cap(shape, 24, 24, 14.0 * f ** (1 / 3), 100.0 * f ** (1 / 3))

    frames, before, truth, kw = _frozen_and_growing(frozen, grow, rng)
    old = ks.segment_sites_growth(frames[-1], frames[-1] > 4, [before, *frames], **kw)
    flank = (old == old[24, 39]) & (truth == 2)  # the frozen cap's label where growth is thicker
    assert flank.sum() >= 20
    lab = ks.segment_sites_layers(frames[-1], frames[-1] > 4, [before, *frames], **kw)
    assert lab.max() == 2
    assert _matched(lab, truth) == 2
    assert (lab[flank] == lab[24, 24]).mean() > 0.9
    # without the hand-over, the flank is a third site
    kept = ks.segment_sites_layers(frames[-1], frames[-1] > 4, [before, *frames], taken_ratio=1.0,
                                   **kw)
    assert kept.max() == 3


def test_tip_erosion_undoes_the_dilation_of_a_steep_cap():
    """A cap imaged by a paraboloid tip looks a pixel wider; the erosion by that tip takes back
    most of the added volume (not the whole ring: the tip never reached the cap's foot)."""
    from scipy import ndimage as ndi

    from ecafm.kernels.change import tip_erode

    px, radius = 39.0, 10.0
    yy, xx = np.mgrid[0:41, 0:41] - 20.0
    surface = np.clip(600.0 * (1 - (yy**2 + xx**2) / 4.5**2), 0, None)  # 600 nm tall, 4.5 px
    r = 2
    uy, ux = np.mgrid[-r:r + 1, -r:r + 1]
    tip = -(uy**2 + ux**2) * px**2 / (2 * radius)  # tip surface below its apex
    foot = uy**2 + ux**2 <= r * r
    image = ndi.grey_dilation(surface, footprint=foot, structure=tip)
    assert (image > 4).sum() >= (surface > 4).sum() + 20  # a ring of about a pixel
    restored = tip_erode(image, radius, px)
    # an upper bound of the surface (the tip cannot reach into the cap's foot corner), below the
    # image, and most of the dilation gone
    assert (restored >= surface - 1e-9).all() and (restored <= image + 1e-9).all()
    assert np.abs(restored - surface).sum() < 0.35 * np.abs(image - surface).sum()  # 0.28 here
    flat = np.random.default_rng(0).normal(0, 1.0, (32, 32))
    np.testing.assert_array_equal(tip_erode(flat, radius, px), flat)  # noise is never touched


def test_row_offsets_found_when_most_of_a_row_changed():
    """Rows 70% covered by deposits: the row median is far off, the unchanged cluster is not."""
    from ecafm.kernels.change import _row_offsets, align_to_reference

    rng = np.random.default_rng(5)
    ny, nx = 64, 100
    ref = rng.normal(0, 1.0, (ny, nx))
    offsets = rng.normal(0, 3.0, ny)
    cur = ref + rng.normal(0, 0.7, (ny, nx)) + offsets[:, None]
    dep = np.zeros((ny, nx))
    dep[:, 30:] = np.linspace(5, 150, 70)[None, :]  # a broad ramp of deposit heights, 70% of each row
    cur += dep
    est = _row_offsets(cur - ref)[:, 0]
    assert np.abs(est - offsets).max() < 0.6
    assert np.abs(np.median(cur - ref, axis=1) - offsets).min() > 5  # what the median gives
    out = align_to_reference(cur, ref)
    assert np.abs(np.median((out - ref)[:, :30], axis=1)).max() < 0.6


def test_pixel_noise_holds_when_most_pixels_sit_on_deposit_flanks():
    from ecafm.kernels.change import _pixel_noise

    rng = np.random.default_rng(8)
    ny, nx = 80, 120
    d = rng.normal(0, 1.0, (ny, nx))
    xx = np.arange(nx)
    tri = 10.0 * (6 - np.abs(xx[:66] % 12 - 6))  # caps' flanks, 10 nm per px up and down
    d[:, :66] += tri[None, :]  # 55% of the pixels
    assert abs(_pixel_noise(d) - 1.0) < 0.3  # flank steps inside 3 sigma still add a little
    mad = 1.4826 * np.median(np.abs(np.diff(d, axis=1))) / np.sqrt(2)  # the plain MAD: broken
    assert mad > 3.0


def test_rows_without_an_unchanged_cluster_take_their_neighbours_offsets():
    """Rows 95% covered by caps: their densest window is a few flank pixels, not the
    substrate; they take the offsets of the rows around them (the lower of the two). A row
    pushed down by leveling keeps its own weakly supported but lower cluster."""
    from ecafm.kernels.change import _row_offsets

    rng = np.random.default_rng(9)
    ny, nx = 64, 100
    offsets = np.linspace(-1.0, 2.0, ny)
    r = rng.normal(0, 1.0, (ny, nx)) + offsets[:, None]
    r[:, 60:] += 80.0  # a deposit plateau over 40% of every row
    covered = slice(28, 34)
    r[covered, 5:] = offsets[covered, None] + rng.uniform(100, 150, (6, 95))  # 5% substrate left
    pushed = slice(45, 48)  # leveling pushed these rows 40 nm down; 15% substrate left
    offsets[pushed] -= 40.0
    r[pushed] = rng.normal(0, 1.0, (3, nx)) + offsets[pushed, None]
    r[pushed, 15:] += rng.uniform(20, 150, (3, nx - 15))
    est = _row_offsets(r)[:, 0]
    assert np.abs(est - offsets).max() < 1.0  # medians of 15-60 pixels of 1 nm noise
    assert np.abs(est[covered] - offsets[covered]).max() < 0.6
    assert np.abs(est[pushed] - offsets[pushed]).max() < 1.0
    # no row with enough pixels: no offsets (and no failure)
    few = np.full((6, 8), np.nan)
    few[:, :3] = 1.0
    np.testing.assert_array_equal(_row_offsets(few), np.zeros((6, 1)))


def test_cluster_centers_of_all_rows_match_the_per_row_definition():
    """The vectorized densest-cluster centres equal the definition, row by row (NaN included)."""
    from ecafm.kernels.change import _cluster_centers

    def reference(v, noise):  # the definition, written out plainly
        v = np.sort(v[np.isfinite(v)])
        n = v.size
        w = max(2.0 * noise, 0.01 * float(v[int(0.9 * (n - 1))] - v[int(0.1 * (n - 1))]), 1e-12)
        counts = np.searchsorted(v, v + 2.0 * w, side="right") - np.arange(n)
        j = int(np.argmax(counts))
        c0 = float(np.median(v[j:j + counts[j]]))
        near = v[np.abs(v - c0) <= w]
        return float(np.median(near)) if near.size >= 3 else c0

    rng = np.random.default_rng(21)
    r = rng.normal(0, 0.5, (40, 97))
    r[:, :50] += rng.uniform(5, 60, (40, 50))  # a changed majority: the cluster is the minority
    r[rng.random(r.shape) < 0.1] = np.nan
    r[3, 5:] = np.nan  # a row with too few values
    got = _cluster_centers(r, 0.5, min_px=10)
    assert np.isnan(got[3])
    want = np.array([reference(r[i], 0.5) if np.isfinite(r[i]).sum() >= 10 else np.nan for i in range(40)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert np.all(np.abs(got[np.isfinite(got)]) < 0.6)  # the unchanged minority, not the median


def test_void_regions_below_the_minimum_area_are_substrate():
    h = np.zeros((8, 8))
    h[1, 1] = -10.0  # one pixel below the reference: the noise's tail
    h[4:6, 4:6] = -10.0  # a 2 x 2 px void
    args = dict(tau_ref=3.0, film_nm=4.0, uncertain=np.zeros(h.shape, bool),
                active=np.zeros(h.shape, bool), residue=np.zeros(h.shape, bool))
    out = kc.state_classes(h, np.zeros(h.shape), min_void_px=4, **args)
    assert out[1, 1] == kc.SUBSTRATE
    assert (out[4:6, 4:6] == kc.VOID).all()
    assert (out == kc.VOID).sum() == 4
    assert kc.state_classes(h, np.zeros(h.shape), **args)[1, 1] == kc.VOID  # default: no filter


def test_residue_lookback_is_validated():
    from ecafm.segment import SegmentParams

    assert SegmentParams().residue_lookback == 1
    for bad in (2, -1, True, 0.5):
        with pytest.raises(ValueError, match="residue_lookback"):
            SegmentParams(residue_lookback=bad)


def test_live_cap_over_earlier_dead_li_is_not_residue_while_it_strips(rng):
    """A site that was residue at the previous trough is residue in a stripping's frames only
    where its dead layer (its height at that trough) is still the thicker material: a live cap
    that grew over its flank and is stripping now is ACTIVE there.

    Toy sequence (plate, strip, plate, strip, plate): cap D grows, strips part of its volume and
    dies; live cap L grows over D's flank in the next plating and strips to a remnant. Before the
    rule 11 of the 15 pixels of D's footprint where L's remnant is thicker than D were residue at
    the second trough.
    """
    from ecafm import segment as sg

    ny = nx = 64
    yy, xx = np.mgrid[:ny, :nx].astype(float)

    def cap(cy, cx, r, h):
        return np.clip(h * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2), 0, None)

    def d(h):
        return cap(32, 24, 10, h)

    def live(h):
        return cap(32, 38, 9, h)

    seq = [(sg.PLATE, d(30)), (sg.PLATE, d(60)), (sg.STRIP, d(50)), (sg.STRIP, d(40)),
           (sg.PLATE, d(40) + live(40)), (sg.PLATE, d(40) + live(80)),
           (sg.STRIP, d(40) + live(50)), (sg.STRIP, d(40) + live(25)), (sg.PLATE, d(40) + live(30))]
    kind = np.array([k for k, _ in seq])
    n = len(seq)
    h = np.stack([z for _, z in seq]) + rng.normal(0, 0.3, (n, ny, nx))
    run = np.concatenate([[0], np.cumsum(kind[1:] != kind[:-1])])
    run_kind = np.array([kind[run == r][0] for r in range(run.max() + 1)])
    moved = np.zeros((n, ny, nx), bool)
    moved[1:] = np.abs(np.diff(h, axis=0)) > 3
    allf = sg._Frames(h=h, valid=np.ones_like(h, bool), usable=np.ones(n, bool), kind=kind,
                      frame=np.arange(n), time=np.arange(n, dtype=float), line_time=np.zeros(n),
                      charge=np.zeros(n), sigma_r=np.full(n, 0.01), rows=np.zeros((n, ny)),
                      q_rows=np.zeros((n, ny)), q_end=np.zeros(n))
    out, trough = sg._site_residue(allf, run, run_kind, moved, np.zeros((ny, nx)),
                                   sg.SegmentParams(), 4, 0.0, range(n))
    assert sorted(trough) == [3, 7]
    assert trough[3][d(40) > 2].mean() > 0.95  # D is residue at its own trough
    live_on_top = (live(25) > d(40)) & (d(40) > 0)
    dead_below = (d(40) >= live(25)) & (d(40) > 2)
    assert live_on_top.sum() >= 10
    assert out[7][live_on_top].mean() <= 0.2, out[7][live_on_top].sum()
    assert out[7][dead_below].mean() >= 0.95


def test_last_frame_extrapolation_does_not_dig_below_the_reference():
    """The last frame of a half-cycle is extrapolated in charge to the half-cycle's end. A cap
    stripped away half-way through that frame would be carried on below the surface it sat on
    (false voids: null preset void IoU 0.70); it stops at the reference, while rows where the cap
    is still there are extrapolated as before."""
    from ecafm import segment as sg

    ny = nx = 32
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    cap = np.clip(1 - ((yy - 16) ** 2 + (xx - 16) ** 2) / 10.0**2, 0, None)
    before = 50 * cap
    last = np.where(yy < 16, 40 * cap, 0.0)  # the cap is gone in the rows scanned after row 15
    h = np.stack([before, last])
    q_rows = np.stack([np.linspace(0, 1, ny), np.linspace(1, 2, ny)])
    allf = sg._Frames(h=h, valid=np.ones_like(h, bool), usable=np.ones(2, bool),
                      kind=np.array([sg.STRIP, sg.STRIP]), frame=np.arange(2),
                      time=np.array([0.0, 1.0]), line_time=np.full(2, 1.0 / ny),
                      charge=np.array([0.5, 1.5]), sigma_r=np.zeros(2), rows=np.tile(np.arange(ny), (2, 1)),
                      q_rows=q_rows, q_end=np.array([1.0, 2.0]))
    moved = np.stack([np.zeros((ny, nx), bool), cap > 0])
    h_ref = np.zeros((ny, nx))
    free, _ = sg._rectify(allf, np.zeros(2, int), moved, ny)
    out, _ = sg._rectify(allf, np.zeros(2, int), moved, ny, h_ref)
    gone = (yy >= 16) & (cap > 0.2)
    assert free[1][gone].min() < -5  # unbounded: 10 nm and more below the surface
    assert out[1][gone].min() >= 0.0
    kept = (yy < 12) & (cap > 0.5)
    assert np.all(out[1][kept] < last[kept] - 1)  # still extrapolated where the cap remains
    np.testing.assert_array_equal(out[1][kept], free[1][kept])


def test_volume_balance_legends_sit_above_the_bars():
    """The class-map figure's balance panel: neither legend covers a bar (on the demo's volumes
    the class legend covered cycle 0's plated and stripped bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.colors import ListedColormap
    from matplotlib.legend import Legend

    from ecafm.figures import volume_balance_panel
    from ecafm.kernels.change import CLASS_NAMES

    cy = pd.DataFrame({"cycle": [0, 1, 2, 3], "plated_nm3": [5.96e8, 4.60e8, 4.10e8, 3.60e8],
                       "stripped_nm3": [4.02e8, 3.54e8, 3.50e8, 3.29e8],
                       "residue_nm3": [1.84e8, 3.03e8, 3.74e8, 0.0],
                       "void_nm3": [1.6e7, 2.2e7, 3.5e7, 4.3e7]})
    fig = plt.figure(figsize=(4.2, 5.6), constrained_layout=True)
    ax = fig.add_subplot()
    cmap = ListedColormap(["0.6", "tab:blue", "tab:red", "tab:orange", "gold", "white"])
    volume_balance_panel(ax, cy, 7.4e-18, cmap, CLASS_NAMES)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legends = [a.get_window_extent(r) for a in ax.get_children() if isinstance(a, Legend)]
    assert len(legends) == 2
    bars = [p.get_window_extent(r) for p in ax.patches]
    assert len(bars) == 16
    assert not any(bar.overlaps(leg) for bar in bars for leg in legends)
    plt.close(fig)


def test_class_figure_maps_at_most_six_cycles_first_and_last_included():
    from ecafm.figures import maps_shown

    assert maps_shown(4) == [0, 1, 2, 3]
    assert maps_shown(6) == list(range(6))
    assert maps_shown(20) == [0, 4, 8, 11, 15, 19]
    assert maps_shown(7) == [0, 1, 2, 4, 5, 6]
    assert maps_shown(1) == [0]


def test_volume_balance_ticks_of_twenty_cycles_do_not_collide():
    """bench-m's 20 cycles: one tick per cycle ran the labels together ("171819")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.colors import ListedColormap

    from ecafm.figures import volume_balance_panel
    from ecafm.kernels.change import CLASS_NAMES

    c = np.arange(20)
    cy = pd.DataFrame({"cycle": c, "plated_nm3": 1e10 + 0 * c, "stripped_nm3": 8e9 + 0 * c,
                       "residue_nm3": 1e9 * (c % 7), "void_nm3": 1e8 + 0 * c})
    fig = plt.figure(figsize=(4.2, 5.6), constrained_layout=True)
    ax = fig.add_subplot()
    volume_balance_panel(ax, cy, 7.4e-18, ListedColormap(["0.6", "tab:blue", "tab:red", "tab:orange", "gold",
                                                          "white"]), CLASS_NAMES)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    lo, hi = ax.get_xlim()
    ticks = [(float(t), lab.get_window_extent(r)) for t, lab in zip(ax.get_xticks(), ax.get_xticklabels(),
                                                                    strict=True) if lo <= t <= hi]
    assert len(ticks) >= 4 and all(float(t).is_integer() for t, _ in ticks)
    boxes = [b for _, b in ticks]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_swapped_current_sign_is_called_out_per_cycle_and_on_the_figure(tmp_path, caplog):
    """positive_current_plates the wrong way round: the demo's first plating reads as a stripping,
    so the log seems to start by stripping (its first plating is half-cycle 1) and every plating the AFM
    shows reads as a stripping. The surface then grows while the log says stripping and shrinks
    while it says plating: each segmented cycle says so in its log and attrs, and the classes
    figure in its title. With the right sign none does."""
    import pandas as pd

    from ecafm.figures import swapped_warning
    from ecafm.ingest import ingest
    from ecafm.pipeline import run_level_register
    from ecafm.segment import looks_swapped, run_segment
    from ecafm.store import Step, open_cube
    from ecafm.synth import synth

    synth("demo", 0, tmp_path / "data", overrides={"n_cycles": 2, "n_px": 64})
    attrs = {}
    for plates in (True, False):
        root = tmp_path / f"plates_{plates}"
        ingest([tmp_path / "data" / "raw"], root / "cube.zarr", ec_log=tmp_path / "data" / "ec" / "log.mpt",
               frame_sheet=tmp_path / "data" / "frames.tsv", positive_current_plates=plates)
        assert open_cube(root / "cube.zarr").attrs.get("first_plating_log_half_cycle") == (None if plates else 1)
        reg = run_level_register(root / "cube.zarr", root / "out", apply=True)
        caplog.clear()
        with caplog.at_level("WARNING", logger="ecafm.segment"):
            run_segment(0, reg["cycle_0"], reg["cycle_0"], reg["transforms"], root / "seg.zarr", root / "seg.tsv",
                        nxt=reg.get("cycle_1"), step=Step("segment_cycle"))
        attrs[plates] = open_cube(root / "seg.zarr").attrs
        warned = [r.getMessage() for r in caplog.records if "look swapped" in r.getMessage()]
        assert len(warned) == (0 if plates else 1)
    right, wrong = attrs[True]["change_px"], attrs[False]["change_px"]
    assert right["plate_grow_px"] > 10 * right["plate_shrink_px"] and not looks_swapped(right)
    assert wrong["plate_shrink_px"] > 10 * wrong["plate_grow_px"] and looks_swapped(wrong)
    table = pd.DataFrame({"cycle": [0, 1], "plating_looks_swapped": [looks_swapped(attrs[p]["change_px"])
                                                                      for p in (True, False)]})
    assert swapped_warning(table.iloc[:1]) == ""
    assert "positive_current_plates" in swapped_warning(table)
    assert "1 of 2 cycles" in swapped_warning(table)

    # No log, a frame sheet whose half_cycle column (no phase) is one behind: the sheet's platings
    # are the demo's strippings. The warning points at the sheet, not at a log the data set lacks.
    sheet = pd.read_csv(tmp_path / "data" / "frames.tsv", sep="\t").drop(columns=["phase", "cycle"])
    sheet["half_cycle"] -= 1
    sheet.to_csv(tmp_path / "data" / "shifted.tsv", sep="\t", index=False)
    root = tmp_path / "sheet_only"
    ingest([tmp_path / "data" / "raw"], root / "cube.zarr", frame_sheet=tmp_path / "data" / "shifted.tsv")
    reg = run_level_register(root / "cube.zarr", root / "out", apply=True)
    caplog.clear()
    with caplog.at_level("WARNING", logger="ecafm.segment"):
        run_segment(0, reg["cycle_0"], reg["cycle_0"], reg["transforms"], root / "seg.zarr", root / "seg.tsv",
                    nxt=reg.get("cycle_1"), step=Step("segment_cycle"))
    assert looks_swapped(open_cube(root / "seg.zarr").attrs["change_px"])
    warned = [r.getMessage() for r in caplog.records if "look swapped" in r.getMessage()]
    assert len(warned) == 1 and "frame sheet" in warned[0] and "positive_current_plates" not in warned[0]


@pytest.mark.parametrize("counts, swapped", [
    ((11803, 241, 208, 11506), False),  # demo cycle 0, right sign
    ((404, 11157, 12875, 168), True),   # the same with the sign the wrong way round
    ((178, 11783, 0, 0), True),         # last cycle: platings only, the wrong way
    ((0, 0, 0, 0), False),              # nothing changed
    ((2, 40, 30, 1), False),            # a quiet cycle: too few pixels to call
    ((300, 11000, 150, 9000), False),   # both half-cycles shrink (dissolution): not a sign error
], ids=["right", "swapped", "platings-only", "quiet-empty", "quiet-few", "both-shrink"])
def test_looks_swapped_needs_both_half_cycles_the_wrong_way_and_enough_pixels(counts, swapped):
    from ecafm.segment import looks_swapped

    keys = ("plate_grow_px", "plate_shrink_px", "strip_grow_px", "strip_shrink_px")
    assert looks_swapped(dict(zip(keys, counts, strict=True))) is swapped


def test_no_plating_advice_suspects_the_log_when_there_is_one(tmp_path):
    """A data set with a log that plates nothing while the frames were taken (here: the cell at
    rest): the advice names the log and its sign convention and clock, not "give an ec_log"."""
    import pandas as pd

    from ecafm.errors import InputFileError
    from ecafm.ingest import ingest
    from ecafm.level import cube_plates_first
    from ecafm.segment import no_plating_advice, run_segment
    from ecafm.store import Step
    from tests.helpers import make_dataset

    assert "give the data set an `ec_log`" in no_plating_advice()
    d = make_dataset(tmp_path / "ds", n_frames=4)
    rest = tmp_path / "rest.csv"
    pd.DataFrame({"time_s": np.arange(0.0, 400.0), "potential_V": 0.1, "current_mA": 0.0}).to_csv(rest, index=False)
    ingest([d["raw"]], tmp_path / "c.zarr", ec_log=rest, frame_sheet=d["frames"])
    assert cube_plates_first(tmp_path / "c.zarr") is False
    with pytest.raises(InputFileError) as err:
        run_segment(0, tmp_path / "c.zarr", tmp_path / "c.zarr", tmp_path / "none.zarr", tmp_path / "s.zarr",
                    tmp_path / "s.tsv", step=Step("segment_cycle"))
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'c.zarr'}: no plating frame") and "rest.csv plates nothing" in msg
    assert "positive_current_plates` (now True)" in msg and "clock_offset_s" in msg and "give the data" not in msg
    assert not (tmp_path / "s.zarr").exists()
