"""Stage ``level``: per-frame leveling of one cycle of a cube (xarray lifting + I/O).

The numerics are in :mod:`ecafm.kernels.level`; this module lifts them over the frame axis with
dask (one task per frame chunk) and writes the leveled cycle through :mod:`ecafm.store`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ecafm.blas import one_blas_thread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LevelParams:
    """Config key ``level``."""

    order: int = 1
    n_iter: int = 3
    k_sigma: float = 3.0
    scars: bool = False


def segment_of(cycle: np.ndarray) -> np.ndarray:
    """Processing segment of each frame: its cycle, with pre-plating frames (-1) in segment 0."""
    return np.maximum(np.asarray(cycle), 0)


def cycle_segments(ds: xr.Dataset) -> list[int]:
    """The cycles of a cube, as processing segments (one Snakemake job each)."""
    return sorted(int(c) for c in np.unique(segment_of(ds["cycle"].values)))


def cube_cycles(cube: str | Path) -> list[int]:
    """:func:`cycle_segments` of the cube stored at ``cube``, read once per written cube.

    The workflow asks for them in the input function of every rule after the ingest checkpoint:
    52 times while Snakemake builds the DAG of bench-m's 20 cycles, and again in each SLURM job's
    own DAG. Each ask opened the store through dask (0.6-0.9 s in a fresh process, 0.27-0.31 s
    without dask). A cube written again is a new directory (:func:`ecafm.store.write_cube`
    publishes by rename), so the directory's inode and mtime key the cache.
    """
    return list(_cube_facts(cube)[0])


def cube_plates_first(cube: str | Path) -> bool:
    """Whether the first cycle of the cube stored at ``cube`` has a plating frame (phase 1).

    The segment stage needs one: h_ref is the last frame before the first plating, and sites are
    born in it. A movie ingested without a potentiostat log or phases in a frame sheet has none
    (every phase -1). Read with :func:`cube_cycles`, from the same opening of the store.
    """
    return _cube_facts(cube)[1]


def _cube_facts(cube: str | Path) -> tuple[tuple[int, ...], bool]:
    p = Path(cube)
    try:
        st = p.stat()
    except FileNotFoundError:
        from ecafm.store import open_cube

        open_cube(p)  # raises with the reason and what to do
        raise
    return _read_cube_facts(str(p.resolve()), st.st_ino, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _read_cube_facts(path: str, inode: int, mtime_ns: int) -> tuple[tuple[int, ...], bool]:
    from ecafm.store import open_cube

    ds = open_cube(path, dask=False)
    seg = segment_of(ds["cycle"].values)
    cycles = tuple(sorted(int(c) for c in np.unique(seg)))
    plates = bool(cycles) and bool(np.any(ds["phase"].values[seg == cycles[0]] == 1))
    return cycles, plates


def select_cycle(ds: xr.Dataset, cycle: int) -> xr.Dataset:
    """Frames of one processing segment (see :func:`segment_of`)."""
    idx = np.flatnonzero(segment_of(ds["cycle"].values) == cycle)
    if idx.size == 0:
        raise ValueError(f"cube has no frame in cycle {cycle} (cycles: {cycle_segments(ds)})")
    return ds.isel(frame=idx)


def _level_one(h: np.ndarray, *, params: LevelParams) -> tuple[np.ndarray, np.ndarray]:
    from ecafm.kernels.level import level_frame, remove_scars

    if not np.isfinite(h).any() or np.nanmax(h) == np.nanmin(h):
        return np.full(h.shape, np.nan, np.float32), np.zeros(h.shape, bool)
    res = level_frame(h, order=params.order, n_iter=params.n_iter, k_sigma=params.k_sigma)
    out = res.height
    if params.scars:
        out = remove_scars(out)
    return out.astype(np.float32, copy=False), res.background


def level_one(h: np.ndarray, *, params: LevelParams) -> np.ndarray:
    """One frame leveled as :func:`level_cycle` levels it (float32; all NaN if it cannot be)."""
    return _level_one(h, params=params)[0]


def level_frames(height: xr.DataArray, *, params: LevelParams = LevelParams()) -> xr.Dataset:
    """Level every frame of a (frame, y, x) array; lazy when the input is dask-backed."""
    lev, bg = xr.apply_ufunc(
        _level_one,
        height,
        input_core_dims=[["y", "x"]],
        output_core_dims=[["y", "x"], ["y", "x"]],
        vectorize=True,
        dask="parallelized",
        output_dtypes=[np.float32, bool],
        kwargs={"params": params},
    )
    lev.attrs = {"units": "nm", "long_name": "leveled height (background median 0)"}
    bg.attrs = {"long_name": "background pixels used by the leveling fit"}
    return xr.Dataset({"height": lev, "background": bg})


@one_blas_thread
def level_cycle(cube: str | Path, cycle: int, out: str | Path, *, params: LevelParams, step) -> dict[str, Any]:
    """Level the frames of one cycle of a cube and write them as their own store."""
    from ecafm.store import open_cube, write_cube

    ds = open_cube(cube)
    sub = select_cycle(ds, cycle)
    lev = level_frames(sub["height"], params=params)
    out_ds = lev.assign_coords({k: v for k, v in sub.coords.items()})
    out_ds.attrs = {**ds.attrs, "stage": "level", "cycle": int(cycle), "level_params": asdict(params)}
    bad = int((~sub["frame_ok"].values).sum())
    log.info("leveling cycle %d: %d frames (%d QC-flagged, leveled but excluded later)",
             cycle, sub.sizes["frame"], bad)
    return write_cube(out_ds, out, step=step)
