"""Write a synthetic data set: raw .gwy frames, EC-Lab log, frame sheet, dataset sheet, truth.

Layout of ``out_dir``::

    raw/frame_0000.gwy ...   Gwyddion files, heights in metres ("/0/data", title "Height")
    ec/log.mpt               EC-Lab text export of the whole experiment
    frames.tsv               file, time_s, line_time_s, cycle, half_cycle, phase
    dataset.tsv              one sheet row: id, raw, format, ec_log, frames, metal, ...
    truth.zarr               ground truth (ecafm.store.write_cube)

The truth cube is streamed: per-frame arrays go to .npy memory maps in a scratch folder and
are handed to the write helper as dask arrays, so no frame cube is ever held in memory.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ecafm.store import Step, write_cube
from ecafm.synth.generator import FrameOut, Generator
from ecafm.synth.render import FLAG_MEANINGS

log = logging.getLogger(__name__)

PHASE_CODES = {"rest": 0, "plate": 1, "strip": 2}
START_TIME = _dt.datetime(2026, 1, 1, 9, 0, 0)

_MAPS = {  # name: (dtype, description, units)
    "height_true": ("float32", "true surface height before instrument artifacts", "nm"),
    "height_observed_clean": ("float32", "tip-dilated true height, no drift or noise", "nm"),
    "class_map": ("uint8", "true state class", ""),
    "site_label": ("int32", "site id of the dominant deposit or void, 0 background", ""),
    "class_map_refgrid": ("uint8", "class_map at the first frame's sample positions (pixel (r, c) at "
                          "(r + drift_dy_px[0, r], c + drift_dx_px[0, r])), rendered there exactly", ""),
    "site_label_refgrid": ("int32", "site_label at the first frame's sample positions, as class_map_refgrid", ""),
}
_ROWS = {
    "row_time_s": ("acquisition time of each row on the log clock", "s"),
    "drift_dy_px": ("true displacement per row along y (drift + creep)", "px"),
    "drift_dx_px": ("true displacement per row along x (drift + creep)", "px"),
    "creep_dy_px": ("creep part of drift_dy_px", "px"),
    "creep_dx_px": ("creep part of drift_dx_px", "px"),
}


def write_gwy(height_nm: np.ndarray, path: str | Path, *, scan_size_nm: float) -> None:
    """Write one height image (nm) as a Gwyddion .gwy file in metres."""
    from gwyfile.objects import GwyContainer, GwyDataField, GwySIUnit

    data = np.ascontiguousarray(height_nm, dtype=np.float64) * 1e-9
    size_m = scan_size_nm * 1e-9
    field = GwyDataField(data, xreal=size_m, yreal=size_m,
                         si_unit_xy=GwySIUnit(unitstr="m"), si_unit_z=GwySIUnit(unitstr="m"))
    obj = GwyContainer()
    obj["/0/data"] = field
    obj["/0/data/title"] = "Height"
    obj.tofile(str(path))


class DatasetWriter:
    """Receives frames one by one and writes the data set around them."""

    def __init__(self, gen: Generator, out_dir: str | Path):
        self.gen = gen
        self.out = Path(out_dir)
        p = gen.params
        (self.out / "raw").mkdir(parents=True, exist_ok=True)
        (self.out / "ec").mkdir(parents=True, exist_ok=True)
        self.scratch = self.out / ".synth-scratch"
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir()
        nf, n = gen.n_frames, p.n_px
        self.maps = {k: np.lib.format.open_memmap(self.scratch / f"{k}.npy", mode="w+",
                                                  dtype=v[0], shape=(nf, n, n))
                     for k, v in _MAPS.items()}
        self.rows = {k: np.zeros((nf, n)) for k in _ROWS}
        self.scalars: list[dict] = []
        self.sheet: list[dict] = []

    def add(self, fr: FrameOut) -> None:
        p = self.gen.params
        name = f"raw/frame_{fr.index:04d}.gwy"
        write_gwy(fr.observed_nm, self.out / name, scan_size_nm=p.scan_size_nm)
        for k in _MAPS:
            self.maps[k][fr.index] = getattr(fr, k)
        for k in _ROWS:
            self.rows[k][fr.index] = getattr(fr, k)
        self.sheet.append({"file": name, "time_s": fr.time_s, "line_time_s": p.line_time_s,
                           "cycle": fr.cycle, "half_cycle": fr.half_cycle, "phase": fr.phase})
        self.scalars.append({
            "time_s": fr.time_s, "time_end_s": fr.time_end_s, "cycle": fr.cycle,
            "half_cycle": fr.half_cycle, "phase": fr.phase, "charge_C": fr.charge_C,
            "charge_start_C": fr.charge_start_C,
            "charge_fov_C": fr.charge_C * self.gen.physics.fov_ratio,
            "deposit_volume_nm3": fr.deposit_volume_nm3,
            "deposit_volume_fov_nm3": fr.deposit_volume_fov_nm3,
        })

    def finish(self) -> dict:
        from ecafm.io.echem import write_mpt

        gen, p = self.gen, self.gen.params
        write_mpt(gen.log_table, self.out / "ec" / "log.mpt", start_time=START_TIME,
                  decimal=".", newline="\r\n")
        pd.DataFrame(self.sheet).to_csv(self.out / "frames.tsv", sep="\t", index=False)
        pd.DataFrame([{
            "id": f"synth-{gen.preset}-{gen.seed}", "raw": "raw", "format": "gwy",
            "ec_log": "ec/log.mpt", "frames": "frames.tsv", "metal": p.metal,
            "positive_current_plates": "true",
            "notes": (f"synthetic ({gen.preset}, seed {gen.seed}); electrode area "
                      f"{p.electrode_area_cm2} cm2; field of view {p.scan_size_nm} nm square"),
        }]).to_csv(self.out / "dataset.tsv", sep="\t", index=False)
        ds = self.truth_dataset()
        params = {"preset": gen.preset, "seed": gen.seed, **gen.params.to_dict()}
        record = write_cube(ds, self.out / "truth.zarr", step=Step(rule="synth", params=params))
        ds.close()
        for arr in self.maps.values():
            arr._mmap.close()  # noqa: SLF001 - release the maps before removing the scratch
        self.maps = {}
        shutil.rmtree(self.scratch, ignore_errors=True)
        return record

    def truth_dataset(self) -> xr.Dataset:
        import dask.array as da

        gen, p, ph, sub = self.gen, self.gen.params, self.gen.physics, self.gen.substrate
        n, pad, px = p.n_px, p.pad_px, p.pixel_size_nm
        fov = (slice(pad, pad + n), slice(pad, pad + n))
        nf = gen.n_frames
        coords = {
            "frame": np.arange(nf),
            "y": (np.arange(n) + 0.5) * px,
            "x": (np.arange(n) + 0.5) * px,
            "cycle_index": np.arange(p.n_cycles),
            "site": np.arange(1, ph.n_sites + 1, dtype=np.int32),
        }
        ds = xr.Dataset(coords=coords)
        ds["y"].attrs = {"units": "nm", "long_name": "pixel centre, row 0 = first scanned line"}
        ds["x"].attrs = {"units": "nm", "long_name": "pixel centre"}
        for k, (_dtype, desc, units) in _MAPS.items():
            arr = da.from_array(np.load(self.scratch / f"{k}.npy", mmap_mode="r"),
                                chunks=(1, n, n))
            ds[k] = (("frame", "y", "x"), arr, {"long_name": desc, "units": units})
        for k in ("class_map", "class_map_refgrid"):
            ds[k].attrs.update(flag_values=list(range(6)), flag_meanings=FLAG_MEANINGS)
        for k, (desc, units) in _ROWS.items():
            ds[k] = (("frame", "y"), self.rows[k], {"long_name": desc, "units": units})
        ds["drift_dy_nm"] = ds["drift_dy_px"] * px
        ds["drift_dx_nm"] = ds["drift_dx_px"] * px
        ds["drift_dy_nm"].attrs = {"long_name": "drift_dy_px in nm", "units": "nm"}
        ds["drift_dx_nm"].attrs = {"long_name": "drift_dx_px in nm", "units": "nm"}
        sc = pd.DataFrame(self.scalars)
        units = {"time_s": "s", "time_end_s": "s", "charge_C": "C", "charge_start_C": "C",
                 "charge_fov_C": "C", "deposit_volume_nm3": "nm3", "deposit_volume_fov_nm3": "nm3"}
        sc["phase"] = sc["phase"].map(PHASE_CODES).astype(np.int8)
        for col in sc.columns:
            ds[col] = ("frame", sc[col].to_numpy(), {"units": units.get(col, "")})
        ds["phase"].attrs.update(flag_values=list(PHASE_CODES.values()),
                                 flag_meanings=" ".join(PHASE_CODES))
        ds["charge_C"].attrs["long_name"] = "cumulative electrode charge at the frame end"
        ds["deposit_volume_nm3"].attrs["long_name"] = "true Li volume in the simulated domain"
        for k, arr in (("substrate_true", sub.height), ("porosity_true", sub.porosity),
                       ("roughness_true", sub.roughness), ("sei_thickness", sub.sei)):
            ds[k] = (("y", "x"), arr[fov].astype(np.float32))
        ds["substrate_true"].attrs["units"] = "nm"
        ds["roughness_true"].attrs["units"] = "nm"
        ds["sei_thickness"].attrs["units"] = "nm"
        ds["porosity_true"].attrs["long_name"] = "local pit-area fraction"
        # per cycle
        plated = ph.cycle_plated
        ds["plated_volume_nm3"] = ("cycle_index", plated)
        ds["stripped_volume_nm3"] = ("cycle_index", ph.cycle_stripped)
        ds["void_volume_nm3"] = ("cycle_index", ph.cycle_void)
        ds["dead_volume_nm3"] = ("cycle_index", ph.cycle_dead)
        ds["ce_true"] = ("cycle_index", (ph.cycle_stripped + ph.cycle_void) / plated,
                         {"long_name": "electrochemical CE (stripped Li incl. voids / plated)"})
        ds["ce_deposit_true"] = ("cycle_index", ph.cycle_stripped / plated,
                                 {"long_name": "stripped deposit volume / plated volume"})
        ds["plated_charge_C"] = ("cycle_index", plated * gen.metal.charge_per_nm3_C
                                 / ph.area_ratio, {"units": "C", "long_name": "electrode"})
        # per site
        site = {
            "site_y_px": ph.site_y - pad, "site_x_px": ph.site_x - pad,
            "site_birth_cycle": ph.site_birth_cycle, "site_parent": ph.site_parent,
            "site_event_cycle": ph.site_event_cycle, "site_event_type": ph.site_event_type,
            "site_porosity": ph.site_porosity, "site_roughness": ph.site_roughness,
            "site_size": ph.site_size,
        }
        for k, v in site.items():
            ds[k] = ("site", v)
        ds["site_size"].attrs = {"units": "nm3", "long_name": "volume plated in the birth cycle"}
        ds["site_parent"].attrs["long_name"] = "merge family root (smallest site id)"
        ds["site_event_type"].attrs["flag_meanings"] = "none inactivation dead_li void"
        inside = ((ph.site_y >= pad) & (ph.site_y < pad + n) & (ph.site_x >= pad)
                  & (ph.site_x < pad + n))
        ds["site_in_fov"] = ("site", inside)
        for k, v in (("site_plated_nm3", ph.site_plated), ("site_stripped_nm3", ph.site_stripped),
                     ("site_dead_nm3", ph.site_dead), ("site_void_nm3", ph.site_void),
                     ("site_p_dead", ph.site_p_dead)):
            ds[k] = (("site", "cycle_index"), v)
        for j, name in enumerate(("z_porosity", "z_roughness", "z_size")):
            ds[f"site_{name}"] = (("site", "cycle_index"), ph.site_z[..., j],
                                  {"long_name": "covariate when at risk of stripping events"})
        mg = ph.merges
        ds["merge_cycle"] = ("merge", mg[:, 0])
        ds["merge_a"] = ("merge", mg[:, 1])
        ds["merge_b"] = ("merge", mg[:, 2])
        ds.attrs = gen.attrs()
        return ds


def write_frames(gen: Generator, frames: Iterable[FrameOut], out_dir: str | Path) -> dict:
    """Write every frame and the data set around it; return the truth's provenance record."""
    w = DatasetWriter(gen, out_dir)
    for fr in frames:
        w.add(fr)
    return w.finish()
