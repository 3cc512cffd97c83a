"""Figures, drawn from saved results only (never inside a stage's computation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecafm.store import Step, write_file

#: class-map columns of the segmentation figure at most (:func:`maps_shown`)
MAX_MAP_COLUMNS = 6


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ingest(cube: str | Path, qc: str | Path, out: str | Path, *, step: Step) -> dict[str, Any]:
    """First/middle/last frame (nm, shared scale) and electrochemistry per frame, QC marked."""
    import numpy as np
    import pandas as pd

    from ecafm.store import open_cube

    plt = _mpl()
    ds = open_cube(cube)
    q = pd.read_csv(qc, sep="\t")
    n = ds.sizes["frame"]
    ok = ds["frame_ok"].values
    good = np.flatnonzero(ok) if ok.any() else np.arange(n)
    picks = sorted({int(good[0]), int(good[len(good) // 2]), int(good[-1])})
    imgs = [_display_plane(ds["height"].isel(frame=i).values) for i in picks]
    nm = ds["x"].values[-1] < 2000
    scale, unit = (1.0, "nm") if nm else (1e-3, "µm")
    x = ds["x"].values * scale
    y = ds["y"].values * scale
    ext = (x[0], x[-1], y[-1], y[0])

    has_log = bool(np.isfinite(ds["potential"].values).any())
    fig = plt.figure(figsize=(12, 6.5), constrained_layout=True)
    gs = fig.add_gridspec(2, 3, height_ratios=[1.3, 1])
    for k, (i, img) in enumerate(zip(picks, imgs, strict=True)):
        ax = fig.add_subplot(gs[0, k])
        lo, hi = np.nanpercentile(img, [1, 99])
        im = ax.imshow(img, cmap="afmhot", vmin=lo, vmax=hi, extent=ext)
        cyc = int(ds["cycle"][i])
        when = f"cycle {cyc}" if cyc >= 0 else ("before cycling" if has_log else "phase unknown")
        ax.set_title(f"frame {i}, t = {float(ds['time'][i]):.0f} s, {when}", fontsize=10)
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"y ({unit})")
        fig.colorbar(im, ax=ax, label="height - plane (nm)", shrink=0.8)

    t = ds["time"].values
    ax = fig.add_subplot(gs[1, :2])
    if has_log:
        ax.plot(t, ds["potential"].values, ".-", color="C0", label="potential")
        ax.set_ylabel("potential (V)", color="C0")
        ax2 = ax.twinx()
        ax2.plot(t, ds["charge"].values, ".-", color="C1")
        ax2.set_ylabel("cumulative charge (C)", color="C1")
        what = "electrochemistry at each frame"
    else:
        # without a log the cycle is -1 everywhere; the frame clock at least shows pauses
        ax.plot(t[1:], np.diff(t), ".-")
        ax.set_ylabel("time since the previous frame (s)")
        what = "no potentiostat log (phases unknown): frame interval"
    bad = ~ok
    if bad.any():
        for tb in t[bad]:
            ax.axvline(tb, color="red", alpha=0.4, lw=1)
    ax.set_xlabel("time (s)")
    ax.set_title(f"{what} ({int(bad.sum())} of {n} frames QC-flagged, red)")

    ax = fig.add_subplot(gs[1, 2])
    ax.plot(q["frame"], q["max_nm"] - q["min_nm"], ".-", label="height range")
    ax.set_xlabel("frame")
    ax.set_ylabel("height range per frame (nm)")
    if bad.any():
        ax.plot(q["frame"][bad], (q["max_nm"] - q["min_nm"])[bad], "rx", label="QC flagged")
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"ingest: {ds.attrs.get('dataset', '')} ({ds.attrs.get('format', '')}, "
                 f"{n} frames, {ds.attrs['pixel_size_nm'][1]:.3g} nm/px)")

    return _write_figure(fig, out, step=step)


def _write_figure(fig, out: str | Path, *, step: Step) -> dict[str, Any]:
    """Save a figure through the write helper (PNG without a software stamp) and close it."""
    import matplotlib.pyplot as plt

    try:
        return write_file(out, lambda tmp: fig.savefig(tmp, dpi=90, format="png", metadata={"Software": None}),
                          step=step, kind="figure")
    finally:
        plt.close(fig)


def _display_plane(img):
    """Frame minus its least-squares plane, for display only (raw frames are tilted)."""
    import numpy as np

    ny, nx = img.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ok = np.isfinite(img)
    a = np.c_[np.ones(ok.sum()), xx[ok], yy[ok]]
    coef, *_ = np.linalg.lstsq(a, img[ok].astype(float), rcond=None)
    return img - (coef[0] + coef[1] * xx + coef[2] * yy)


def mark_outvoted(ax: Any, tf: Any, frames: Any, dy_nm: Any, *, max_labels: int = 4) -> int:
    """Mark the cycle-start observations the robust adjustment outvoted on the drift curve.

    Each gets a marker at its target frame; up to ``max_labels`` of them also a label (kind,
    from -> to). More labels ran into each other and over the curve (bench-m: 10); the legend
    then gives their number, and ``obs_*`` of transforms.zarr has every one. Returns the number
    marked.
    """
    import numpy as np

    bad = tf["obs_weight"].values < 0.5
    fpos = {int(v): i for i, v in enumerate(frames)}
    kinds = tf["obs_kind"].attrs.get("flag_meanings", "chain direct skip").split()
    obs = [(int(k), int(a), int(b)) for k, a, b in zip(tf["obs_kind"].values[bad], tf["obs_from_frame"].values[bad],
                                                       tf["obs_to_frame"].values[bad], strict=True)
           if int(b) in fpos]
    if not obs:
        return 0
    xs = np.array([b for _, _, b in obs])
    ys = np.array([dy_nm[fpos[b]] for _, _, b in obs])
    label = "cycle-start observation outvoted"
    ax.plot(xs, ys, "v", color="m", ms=9, ls="none",
            label=label if len(obs) <= max_labels else f"{label} ({len(obs)}; obs_* in transforms.zarr)")
    if len(obs) <= max_labels:
        for (k, a, b), y in zip(obs, ys, strict=True):
            ax.annotate(f"{kinds[k]} {a}->{b}", (b, y), fontsize=7, color="m", xytext=(2, -10),
                        textcoords="offset points")
    return len(obs)


def pair_qc_panel(ax: Any, df: Any, min_peak_ratio: float) -> dict[str, int]:
    """Peak ratio of each frame pair's height correlation, passed pairs apart from flagged ones.

    One colour for every pair that passed, and a marker per combination of flags for the others,
    with its count: a pair above the threshold can still fail (a weak peak of the gradients'
    estimate, a disagreement, a jump), and the panel has to say so. Frames excluded before
    registration (``ingest_qc``: no pair) are counted in the legend. Returns the legend's counts.
    """
    import numpy as np

    f = df["frame"].to_numpy()
    pr = df["pair_peak_ratio"].to_numpy(float)
    ok = df["ok"].to_numpy(bool)
    names = df["flag_names"].fillna("").astype(str).to_numpy()
    has_pair = np.isfinite(pr)
    counts = {}
    m = ok & has_pair
    if m.any():
        counts["passed"] = int(m.sum())
        ax.semilogy(f[m], pr[m], ".", color="C2", ls="none", label=f"passed ({m.sum()})")
    markers = iter("xv^sDP*")
    for name in sorted(set(names[~ok & has_pair])):
        m = ~ok & has_pair & (names == name)
        label = (name or "failed").replace(",", ", ")
        counts[label] = int(m.sum())
        ax.semilogy(f[m], pr[m], next(markers, "x"), color="C3", ls="none", ms=6, mfc="none",
                    label=f"{label} ({m.sum()})")
    # frames without a pair of their own: each cycle's first frame (linked across the boundary)
    # and frames excluded before registration
    for name in sorted(set(names[~has_pair])):
        for passed in (True, False):
            m = ~has_pair & (names == name) & (ok == passed)
            if not m.any():
                continue
            what = ("first of a cycle" if passed else "excluded") + (f", {name.replace(',', ', ')}" if name else "")
            counts[f"no pair, {what}"] = int(m.sum())
            ax.plot([], [], " ", label=f"no pair, {what} ({m.sum()})")
    ax.axhline(min_peak_ratio, color="k", ls="--", lw=1, label=f"min_peak_ratio {min_peak_ratio:g}")
    ax.set_yscale("log")
    ax.set_xlabel("frame")
    ax.set_ylabel("peak ratio, heights' correlation")
    ax.set_title("pairwise QC")
    # headroom for the legend above the points: each of its lines takes ~7% of the axes' height
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, lo * (hi / lo) ** (1 / max(0.3, 1 - 0.075 * (len(counts) + 2))))
    from matplotlib.ticker import FuncFormatter

    # 2, 5, 10, 20, not 2 x 10^0; of the minor ticks only 2 and 5 are labelled
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.legend(fontsize=7, title="weak_peak: heights' peak, or gradients' if they disagree", title_fontsize=7, loc="upper left")
    return counts


def plot_registration(transforms: str | Path, table: str | Path, registered: list[str], out: str | Path,
                      *, step: Step, min_peak_ratio: float | None = None) -> dict[str, Any]:
    """Drift per frame (nm) with errors, intra-frame drift span, peak ratio QC, and the first and
    last usable registered frames. ``min_peak_ratio``: the registration's QC threshold (config
    ``register.min_peak_ratio``; default :class:`ecafm.register.RegisterParams`'s)."""
    import numpy as np
    import pandas as pd

    from ecafm.store import open_cube

    if min_peak_ratio is None:
        from ecafm.register import RegisterParams

        min_peak_ratio = RegisterParams().min_peak_ratio
    plt = _mpl()
    tf = open_cube(transforms).load()
    df = pd.read_csv(table, sep="\t")
    ok = df["ok"].to_numpy(bool)
    f = df["frame"].to_numpy()
    fig = plt.figure(figsize=(12, 7), constrained_layout=True)
    gs = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(gs[0, :2])
    err_nm = df["error_px"] * float(tf.attrs["pixel_size_nm"][1])
    for col, lab, c in (("dy_nm", "slow axis (y)", "C0"), ("dx_nm", "fast axis (x)", "C1")):
        ax.errorbar(f[ok], df[col][ok], yerr=err_nm[ok], fmt=".-", color=c, label=lab, capsize=2)
    if (~ok).any():
        ax.plot(f[~ok], np.zeros((~ok).sum()), "rx", ms=9, label="registration failed (excluded)")
    for b in np.flatnonzero(np.diff(df["cycle_index"].to_numpy()) != 0):
        ax.axvline(f[b] + 0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("frame")
    ax.set_ylabel("drift relative to the first frame (nm)")
    if "obs_weight" in tf:
        mark_outvoted(ax, tf, f, df["dy_nm"].to_numpy())
    ax.legend(fontsize=8)
    lc = tf["loop_closure_px"].values
    lc_txt = f", max loop closure {np.nanmax(lc):.3f} px" if np.isfinite(lc).any() else ""
    ax.set_title(f"drift: {int(ok.sum())} of {len(ok)} frames registered{lc_txt}")

    ax = fig.add_subplot(gs[0, 2])
    ax.plot(f[ok], df["row_shift_span_px"][ok], ".-")
    ax.set_xlabel("frame")
    # shift_x (frame, y) is each row's shift onto the reference grid: its span is the frame's
    # distortion against the reference frame, whose own drift within the frame it carries
    ax.set_ylabel("span of the rows' shifts, fast axis (px)")
    ax.set_title("drift within each frame, vs the reference", fontsize=10)

    pair_qc_panel(fig.add_subplot(gs[1, 0]), df, min_peak_ratio)

    shown = [int(f[ok][0]), int(f[ok][-1])] if ok.any() else [int(f[0]), int(f[-1])]
    for k, fr in enumerate(shown):  # the first from the first cycle on, the last from the last back
        ds = next(c for c in map(open_cube, registered if k == 0 else registered[::-1]) if fr in c["frame"].values)
        h = ds["height"].sel(frame=fr).values
        axk = fig.add_subplot(gs[1, 1 + k])
        ext = (float(ds["x"][0]) / 1e3, float(ds["x"][-1]) / 1e3, float(ds["y"][-1]) / 1e3, float(ds["y"][0]) / 1e3)
        lo, hi = np.nanpercentile(h, [1, 99]) if np.isfinite(h).any() else (0, 1)
        im = axk.imshow(h, cmap="afmhot", vmin=lo, vmax=hi, extent=ext)
        which = ("first" if k == 0 else "last") + (" usable" if ok.any() else "")
        axk.set_title(f"{which}: registered frame {fr} (common field)", fontsize=10)
        axk.set_xlabel("x (µm)")
        axk.set_ylabel("y (µm)")
        fig.colorbar(im, ax=axk, label="height (nm)", shrink=0.8)

    return _write_figure(fig, out, step=step)


def maps_shown(n_cycles: int, max_cols: int = MAX_MAP_COLUMNS) -> list[int]:
    """Which cycles (positions 0..n-1) get class maps: all of them up to ``max_cols``, else
    ``max_cols`` spread evenly from the first to the last. One column per cycle made bench-m's
    20-cycle figure 5085 px wide; the balance panel beside the maps still shows every cycle."""
    import numpy as np

    if n_cycles <= max_cols:
        return list(range(n_cycles))
    return sorted({int(v) for v in np.round(np.linspace(0, n_cycles - 1, max_cols))})


def plot_classes(segments: list[str], labels: str | Path, cycles: str | Path, out: str | Path, *,
                 step: Step) -> dict[str, Any]:
    """Class maps at the plating peak and stripping end of each cycle (of up to
    :data:`MAX_MAP_COLUMNS` cycles, :func:`maps_shown`), plus every cycle's volume balance."""
    import numpy as np
    import pandas as pd
    from matplotlib.colors import ListedColormap
    from skimage.segmentation import find_boundaries

    from ecafm.kernels.change import CLASS_NAMES
    from ecafm.store import open_cube

    plt = _mpl()
    segs = [open_cube(segments[i])[["state", "kind"]].load() for i in maps_shown(len(segments))]
    lab = open_cube(labels).load()
    cy = pd.read_csv(cycles, sep="\t")
    cmap = ListedColormap(["0.6", "tab:blue", "tab:red", "tab:orange", "gold", "white"])
    n = len(segs)
    fig = plt.figure(figsize=(2.6 * n + 4.5, 5.6), constrained_layout=True)
    gs = fig.add_gridspec(2, n + 1, width_ratios=[1] * n + [1.6])
    for k, seg in enumerate(segs):
        c = int(seg.attrs["cycle"])
        ext = (float(seg["x"][0]) / 1e3, float(seg["x"][-1]) / 1e3,
               float(seg["y"][-1]) / 1e3, float(seg["y"][0]) / 1e3)
        for r, (kind, what) in enumerate(((1, "plating end"), (2, "stripping end"))):
            ax = fig.add_subplot(gs[r, k])
            idx = np.flatnonzero(seg["kind"].values == kind)
            if idx.size:
                ax.imshow(seg["state"].values[idx[-1]], cmap=cmap, vmin=-0.5, vmax=5.5,
                          extent=ext, interpolation="nearest")
                if kind == 1 and c in lab["cycle"].values:
                    b = find_boundaries(lab["site_label"].sel(cycle=c).values, mode="inner")
                    ax.imshow(np.ma.masked_where(~b, b), cmap="gray_r", extent=ext,
                              interpolation="nearest", alpha=0.6)
            ax.set_title(f"cycle {c}, {what}", fontsize=9)
            ax.set_xlabel("x (µm)", fontsize=8)
            ax.set_ylabel("y (µm)", fontsize=8)
            ax.tick_params(labelsize=7)
    volume_balance_panel(fig.add_subplot(gs[:, n]), cy, float(lab.attrs["charge_per_nm3_C"]), cmap, CLASS_NAMES)
    warning = swapped_warning(cy)
    if warning:
        fig.suptitle(warning, color="red", fontsize=10)

    return _write_figure(fig, out, step=step)


def swapped_warning(cycles: Any) -> str:
    """The classes figure's red title when the surface grew while the log said stripping and
    shrank while it said plating (``plating_looks_swapped`` of cycles.tsv,
    :func:`ecafm.segment.looks_swapped`), else ''."""
    from ecafm.segment import swapped_cycles

    bad = swapped_cycles(cycles)
    if not bad:
        return ""
    return (f"CHECK positive_current_plates (no log: the frame sheet's phases): in {len(bad)} of {len(cycles)} cycles the surface shrank while "
            f"plating and grew while stripping (cycles {', '.join(map(str, bad[:8]))}{', ...' if len(bad) > 8 else ''})")


def volume_balance_panel(ax: Any, cy: Any, charge_per_nm3_C: float, cmap: Any, class_names: list[str]) -> None:
    """Bars of plated, stripped, residue and void volume per cycle (charge on the right axis),
    with the legend of the bars and that of the class maps above the bars, never over them."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    w = 0.2
    x = cy["cycle"].to_numpy()
    cols = ("plated_nm3", "stripped_nm3", "residue_nm3", "void_nm3")
    for j, (col, lab_) in enumerate(zip(cols, ("plated V+", "stripped V-", "inactive residue", "void"),
                                        strict=True)):
        ax.bar(x + (j - 1.5) * w, cy[col] / 1e6, width=w, label=lab_,
               color=("tab:green", "tab:purple", "tab:red", "tab:blue")[j])
    top = np.nanmax(np.r_[0.0, *(cy[c].to_numpy(float) / 1e6 for c in cols)])
    ax.set_ylim(0, 1.75 * top if top > 0 else 1.0)  # the two legends sit in the headroom
    ax.set_xlabel("cycle")
    ax.set_ylabel("volume (10⁶ nm³)")
    sec = ax.secondary_yaxis("right", functions=(lambda v: v * 1e6 * charge_per_nm3_C * 1e12,
                                                 lambda q: q / 1e12 / charge_per_nm3_C / 1e6))
    sec.set_ylabel("charge (pC)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole cycles, not crowded at 20
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=cmap(i), edgecolor="0.5") for i in range(len(class_names))]
    leg = ax.legend(fontsize=7, loc="upper right")
    ax.add_artist(leg)
    ax.legend(handles, [s.replace("_", " ") for s in class_names], fontsize=7, loc="upper left",
              title="classes", title_fontsize=7)
    ax.set_title("volume balance per cycle")


def plot_lifetimes(summary: str | Path, balance: str | Path, out: str | Path, *, step: Step) -> dict[str, Any]:
    """Kaplan-Meier by tertiles of the primary descriptors, CE per cycle, dead volume per cycle."""
    import json

    import pandas as pd

    s = json.loads(Path(summary).read_text())
    try:
        b = pd.read_csv(balance, sep="\t")
    except pd.errors.EmptyDataError:
        b = pd.DataFrame({"cycle": [], "ce_volumetric": [], "ce_volumetric_with_voids": [], "residue_nm3": []})
    fig = lifetime_figure(s, b)
    return _write_figure(fig, out, step=step)


def lifetime_figure(s: dict[str, Any], b: Any) -> Any:
    """The lifetime stage's figure from its summary (dict) and balance table (DataFrame)."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = _mpl()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    km = s.get("kaplan_meier", {})
    # the endpoint with the most events (on the demo: dead-Li conversion, 45 against 7 inactivations)
    ev = s.get("events", {})
    endpoint = max(("dead", "inactivation", "void"), key=lambda e: ev.get(e, 0))
    what = {"dead": "free of dead-Li conversion", "inactivation": "still active", "void": "free of voids"}
    title = {"dead": "dead-Li conversion", "inactivation": "inactivation", "void": "void failure"}
    for ax, key, label in ((axes[0, 0], "porosity_proxy", "initial porosity proxy (pit-area fraction)"),
                           (axes[0, 1], "crest_rms", "initial crest roughness")):
        k = next((k for k in km if k.startswith(f"{endpoint}:") and f":{key}_" in k), None)
        if k is None:
            ax.text(0.5, 0.5, "too few events for Kaplan-Meier", ha="center", transform=ax.transAxes)
        else:
            for g, col in (("low", "C0"), ("mid", "C1"), ("high", "C3")):
                if g in km[k]["groups"]:
                    d = km[k]["groups"][g]
                    ax.step(d["timeline"], d["survival"], where="post", color=col,
                            label=f"{g} tertile (n={d['n']}, events {d['events']})")
            ax.set_title(f"{title[endpoint]} by {label}\nlog-rank p = {km[k]['logrank_p']:.3g}", fontsize=10)
            ax.legend(fontsize=8)
        ax.set_xlabel("cycle")
        ax.set_ylabel(f"fraction of sites {what[endpoint]}")
        ax.set_ylim(-0.02, 1.02)
    ax = axes[1, 0]
    ax.plot(b["cycle"], 100 * b["ce_volumetric_with_voids"], "o-", label="volumetric (AFM, incl. voids)")
    ax.plot(b["cycle"], 100 * b["ce_volumetric"], "s--", label="volumetric (deposits only)")
    if "ce_electrochemical" in b:
        ax.plot(b["cycle"], 100 * b["ce_electrochemical"], "^-", label="electrochemical (log)")
    ax.set_xlabel("cycle")
    ax.set_ylabel("Coulombic efficiency (%)")
    ax.legend(fontsize=8)
    ax.set_title("Coulombic efficiency per cycle")
    ax = axes[1, 1]
    ax.bar(b["cycle"], b["residue_nm3"] / 1e9, color="C7", label="inactive residue")
    ax.set_xlabel("cycle")
    ax.set_ylabel("inactive residue volume (µm³)")
    if "apparent_density_factor" in b and np.isfinite(b["apparent_density_factor"]).any():
        ax2 = ax.twinx()
        ax2.plot(b["cycle"], b["apparent_density_factor"], "o-", color="C2")
        ax2.set_ylabel("apparent density factor (AFM / log charge)", color="C2")
    ax.set_title("dead-Li candidate volume and charge balance")
    for ax in axes.flat:  # cycles are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    events = ", ".join(f"{n} {title.get(e, e)}s" for e, n in ev.items())
    fig.suptitle(f"site lifetimes: {s['n_sites']} sites; events: {events or 'none'}")
    return fig

