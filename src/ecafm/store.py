"""The one write helper every artifact goes through, with its provenance record.

Each artifact gets a provenance record (JSON) next to it:

``X.prov.json`` beside the artifact ``X`` (a zarr store ``X.zarr`` or a file); kept outside
the store because zarr warns about foreign files inside a hierarchy.

Writes are atomic: data go to a hidden partial path first and are renamed into place only after
the hashes and the record are written, so a failed job never leaves an artifact that looks
complete. Record format: see ``README.md`` ("Provenance record").

Versions: every write also files the artifact and its record under
``<root>/.versions/<version_id>/<path relative to root>`` (hard links, a copy where the file system
refuses them), where ``<root>`` is the nearest ancestor folder named ``results`` (else the
artifact's own folder). Snakemake deletes a job's outputs before re-running it, so the old version
survives only if it was filed when it was written; see ``README.md`` ("Versions and audit").
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import xarray as xr

log = logging.getLogger(__name__)

RECORD_SCHEMA = "ecafm.provenance/2"
#: Record formats the readers (verify, history, status, audit, export) understand. /2 adds
#: ``code.imported`` (ecafm modules loaded by the writing process, with their hashes) and
#: ``code.imported_sha256``; its version id covers wildcards and the imported modules instead of
#: the whole package source.
READABLE_SCHEMAS = ("ecafm.provenance/1", RECORD_SCHEMA)
SIDECAR_SUFFIX = ".prov.json"
VERSIONS_DIR = ".versions"
#: Folder name that marks the root of a results tree (the version store lives in it).
RESULTS_DIR_NAME = "results"
KEY_LIBRARIES = (
    "numpy",
    "scipy",
    "scikit-image",
    "xarray",
    "zarr",
    "numcodecs",
    "dask",
    "pandas",
    "snakemake",
    "afmreader",
    "surfacetopography",
)
_CHUNK = 1 << 20
#: Files other tools put into a store that are not part of the artifact (Snakemake's marker of
#: directory outputs).
IGNORED_FILES = frozenset({".snakemake_timestamp"})


# --------------------------------------------------------------------------- canonical JSON
def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return repr(obj)  # 'nan', 'inf', '-inf': JSON has no such numbers
    return obj


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no whitespace and numpy scalars converted: stable for hashing."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- hashes
def store_files(path: str | Path) -> dict[str, str]:
    """Sorted per-file sha256 of a directory (or one file)."""
    path = Path(path)
    if path.is_file():
        return {path.name: sha256_file(path)}
    return {name: sha256_file(p) for name, p in _artifact_files(path)}


def _artifact_files(path: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every file of a directory artifact, sorted, ignored names left out."""
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name not in IGNORED_FILES:
            yield p.relative_to(path).as_posix(), p


def physical_hash(path: str | Path) -> str:
    """sha256 over the sorted (relative path, sha256) list of every file of the artifact."""
    return sha256_bytes(canonical_json(store_files(path)).encode())


def file_stats(path: str | Path) -> dict[str, list[int]]:
    """(size, mtime_ns, ctime_ns, inode) of every file of a directory artifact, by relative path.

    Any write to a file changes its ctime, which no user call can set back; a copy or a move to
    another file system changes inode and ctime.
    """
    out: dict[str, list[int]] = {}
    for name, p in _artifact_files(Path(path)):
        out[name] = _identity(p.stat())
    return out


def disk_mb(path: str | Path) -> float:
    """Size on disk in MB of a file, or of every file under a directory (a zarr store); 0 if absent.

    The workflow sizes each job's memory and runtime by its inputs, and Snakemake asks for both
    of every job: 174 walks of bench-m's stores (61k file stats, 3-6 s of the scheduler's
    process, between job starts). A store is walked once per written store: ecafm publishes a
    store by renaming a finished directory into place, so the directory's inode and mtime key
    the cache (a file changed deep inside a store in place keeps the old size: resources only).
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return 0.0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size / 1e6
    return _tree_bytes(str(p.resolve()), st.st_ino, st.st_mtime_ns) / 1e6


@functools.lru_cache(maxsize=4096)
def _tree_bytes(path: str, inode: int, mtime_ns: int) -> int:
    total, todo = 0, [path]
    while todo:
        with os.scandir(todo.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                elif e.is_file():
                    total += e.stat().st_size
    return total


def _identity(st) -> list[int]:
    """Size, mtime, ctime and inode: they all stay the same only while the file is untouched."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def logical_hash(ds: xr.Dataset | xr.DataArray) -> str:
    """Hash of what the data mean, independent of codec, chunking and thread count.

    Covers, for every variable and coordinate in sorted order: name, dims, shape, dtype,
    sorted attrs, and the decoded values fed slab by slab along the first axis (so a dask-backed
    dataset is hashed without loading it whole).
    """
    import numpy as np
    import xarray as xr

    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "__data__")
    h = hashlib.sha256()
    h.update(canonical_json({"attrs": dict(ds.attrs)}).encode())
    names = sorted(map(str, ds.variables))
    for name in names:
        var = ds.variables[name]
        head = {
            "name": name,
            "dims": list(var.dims),
            "shape": list(var.shape),
            "dtype": str(var.dtype),
            "attrs": dict(var.attrs),
        }
        h.update(canonical_json(head).encode())
        data = var.data
        if var.ndim == 0 or var.shape[0] == 0:
            h.update(np.ascontiguousarray(np.asarray(data)).tobytes())
            continue
        step = max(1, int(_CHUNK * 8 // max(1, var.dtype.itemsize * int(np.prod(var.shape[1:])))))
        for start in range(0, var.shape[0], step):
            block = np.asarray(data[start : start + step])
            if block.dtype.kind == "O":
                h.update(canonical_json(block.tolist()).encode())
            else:
                h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()


def table_logical_hash(df: pd.DataFrame) -> str:
    """Logical hash of a table: column names, dtypes and values (row order kept)."""
    import pandas as pd

    h = hashlib.sha256()
    h.update(canonical_json({"columns": list(map(str, df.columns)),
                             "dtypes": [str(t) for t in df.dtypes]}).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- code identity
def _package_root() -> Path:
    return Path(__file__).resolve().parent


def module_hashes() -> dict[str, str]:
    """sha256 of every source file of the ecafm package, by module name."""
    root = _package_root()
    out = {}
    for p in sorted(root.rglob("*.py")):
        mod = "ecafm." + p.relative_to(root).with_suffix("").as_posix().replace("/", ".")
        out[mod.removesuffix(".__init__")] = sha256_file(p)
    return out


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(
            ["git", *args], cwd=_package_root(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def imported_modules(mods: Mapping[str, str] | None = None) -> dict[str, str]:
    """sha256 of the ecafm modules this process has imported (``sys.modules``), by name.

    What actually ran: an edit to a module the writer never imported does not touch its artifacts.
    """
    mods = module_hashes() if mods is None else mods
    return {m: h for m, h in sorted(mods.items()) if m in sys.modules}


def code_identity() -> dict[str, Any]:
    """Package version, hash of the whole package source, per-module hashes, git commit/dirty,
    and the modules imported by this process with the hash over them."""
    from ecafm import __version__

    mods = module_hashes()
    imported = imported_modules(mods)
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status)
    return {
        "package": "ecafm",
        "version": __version__,
        "source_sha256": sha256_bytes(canonical_json(mods).encode()),
        "modules": mods,
        "imported": imported,
        "imported_sha256": sha256_bytes(canonical_json(imported).encode()),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def library_versions(names: Iterable[str] = KEY_LIBRARIES) -> dict[str, str | None]:
    """Python's and the key libraries' versions (None: not installed).

    Read once per process. Reading them took 12-33 ms of every record (11 package metadata
    files parsed), and a process keeps the libraries it imported even if another version is
    installed on disk meanwhile, so the first reading is the one that describes the run.
    """
    return dict(_library_versions(tuple(names)))


@functools.lru_cache(maxsize=8)
def _library_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class Step:
    """What made an artifact: rule (or CLI command), wildcards, params, and its inputs."""

    rule: str
    params: Mapping[str, Any] = field(default_factory=dict)
    wildcards: Mapping[str, str] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    threads: int = 1
    #: the Snakemake rule whose job ran the step (not hashed: a step keeps its version id
    #: whichever job runs it); empty outside Snakemake
    job_rule: str = ""


_INPUT_SHA256: dict[tuple, str] = {}


def _input_file_sha256(path: Path) -> str:
    """sha256 of an input file, once per process while its size, times and inode stay the same.

    A job writing several outputs records the same inputs in each record: ingest hashed its 321
    raw bench-m files twice (3.4 s each time, at this machine's 180 MB/s sha256).
    """
    key = _input_key(path)
    if key not in _INPUT_SHA256:
        _INPUT_SHA256[key] = sha256_file(path)
    return _INPUT_SHA256[key]


def _input_key(path: str | Path) -> tuple:
    path = Path(path)
    return (str(path.resolve()), *_identity(path.stat()))


def hash_input_file(path: str | Path) -> tuple[tuple, str]:
    """(identity, sha256) of an input file, for a worker process to hand to :func:`remember_input_hash`."""
    key = _input_key(path)
    return key, sha256_file(path)


def remember_input_hash(path: str | Path, key: tuple, digest: str) -> None:
    """Reuse a digest computed elsewhere (:func:`hash_input_file`) while the file is unchanged."""
    if _input_key(path) == key:
        _INPUT_SHA256[key] = digest


#: directory input -> its physical hash, for the rest of a Snakemake job (:func:`job_inputs_fixed`)
_JOB_DIR_SHA256: dict[tuple, str] | None = None


def job_inputs_fixed() -> None:
    """Describe each input store once for the rest of this process: it runs one Snakemake job.

    A job records the same inputs in the record of every output it writes, and checking a store
    against its record walks all its files: track_sites walked 20 segment cubes for each of its
    5 outputs (about 9 ms each), every register job the ingested cube (350 files) for both
    its level and its link step. Snakemake starts a job only once its inputs are complete, and
    no job writes another's inputs while it runs, so within the job they stay the same stores.
    (A store the job writes and then reads, as register_cycle's leveled cube, is described
    after it is written.)

    A store written again through ecafm (renamed into place, with a new record) is described
    anew. Not for a process that runs several stages (:mod:`ecafm.pipeline`, a notebook): there
    a store can also be edited in place between two records, and each record checks it anew.
    """
    global _JOB_DIR_SHA256
    _JOB_DIR_SHA256 = {}


def _store_sha256(path: Path, rec: dict[str, Any] | None) -> str:
    """Physical hash of an input store: the recorded one while every file is as recorded."""
    # A store whose files all have the size, times and inode recorded when it was written is
    # the one hashed then: its recorded hash is reused instead of re-reading it (every level
    # job used to re-hash the whole ingested cube: 1.5 of 2.7 s per bench-m cycle). Anything
    # else is hashed. `ecafm audit` and `verify` always re-hash.
    stats = (rec or {}).get("run", {}).get("file_stats")
    if stats is not None and stats == file_stats(path):
        return rec["artifact"]["physical_sha256"]
    return physical_hash(path)


def describe_input(path: str | Path) -> dict[str, Any]:
    """Input entry: path, sha256 (file) or physical hash (directory), and its version id if any."""
    path = Path(path)
    entry: dict[str, Any] = {"path": str(path)}
    if not path.exists():
        raise FileNotFoundError(f"{path}: input does not exist")
    rec = read_record(path, missing_ok=True)
    if path.is_dir():
        if _JOB_DIR_SHA256 is None:
            entry["sha256"] = _store_sha256(path, rec)
        else:
            # a store written again (by ecafm: a new directory renamed into place, a new
            # record beside it) is another key
            key = (*_input_key(path), *(_input_key(record_path(path)) if rec is not None else ()))
            if key not in _JOB_DIR_SHA256:
                _JOB_DIR_SHA256[key] = _store_sha256(path, rec)
            entry["sha256"] = _JOB_DIR_SHA256[key]
    else:
        entry["sha256"] = _input_file_sha256(path)
    if rec is not None:
        entry["version_id"] = rec["version_id"]
        entry["logical_sha256"] = rec["artifact"]["logical_sha256"]
    return entry


def version_id(step: Step, inputs: list[dict[str, Any]], code: Mapping[str, Any],
               libs: Mapping[str, Any]) -> str:
    """Version of an artifact: rule, wildcards, params, its inputs' ids (or hashes), the code it
    ran (hash of the imported ecafm modules; of the whole package for older records) and the key
    library versions."""
    ident = {
        "rule": step.rule,
        "wildcards": dict(step.wildcards),
        "params": step.params,
        "inputs": [i.get("version_id", i.get("sha256")) for i in inputs],
        "code": code.get("imported_sha256", code["source_sha256"]),
        "libraries": libs,
    }
    return sha256_bytes(canonical_json(ident).encode())[:16]


def record_path(path: str | Path) -> Path:
    """Where the provenance record of an artifact lives."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)



def read_record(path: str | Path, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """Read the provenance record of an artifact."""
    rp = record_path(Path(path))
    if not rp.exists():
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path}: no provenance record ({rp.name}) beside it")
    rec = json.loads(rp.read_text())
    if rec.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"{rp}: record format {rec.get('schema')!r} is not one of {READABLE_SCHEMAS}; "
                         "was it written by a newer ecafm?")
    return rec


def _make_record(path: Path, kind: str, logical: str, files: dict[str, str], step: Step,
                 started: _dt.datetime) -> dict[str, Any]:
    inputs = [describe_input(p) for p in step.inputs]
    code = code_identity()
    libs = library_versions()
    return {
        "schema": RECORD_SCHEMA,
        "version_id": version_id(step, inputs, code, libs),
        "artifact": {
            "path": str(path),
            "kind": kind,
            "logical_sha256": logical,
            "physical_sha256": sha256_bytes(canonical_json(files).encode()),
            "files": files,
        },
        "step": {
            "rule": step.rule,
            "wildcards": dict(step.wildcards),
            "params": _jsonable(dict(step.params)),
        },
        "inputs": inputs,
        "code": code,
        "libraries": libs,
        # Not hashed: where and when.
        "run": {
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "python_executable": sys.executable,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "snakemake_rule": step.job_rule or None,
            "threads": step.threads,
            "start": started.isoformat(),
            "end": _dt.datetime.now(_dt.UTC).isoformat(),
        },
    }


# --------------------------------------------------------------------------- version store
_ARCHIVE = {"enabled": True}


@contextlib.contextmanager
def archiving(enabled: bool) -> Iterator[None]:
    """Turn filing of versions on or off inside a block (the audit's scratch re-runs)."""
    before = _ARCHIVE["enabled"]
    _ARCHIVE["enabled"] = enabled
    try:
        yield
    finally:
        _ARCHIVE["enabled"] = before


def versions_root(path: str | Path) -> Path:
    """Root of the version store of an artifact: nearest ancestor named ``results``, else its folder."""
    path = Path(os.path.abspath(path))
    for parent in path.parents:
        if parent.name == RESULTS_DIR_NAME:
            return parent
    return path.parent


def archive_path(path: str | Path, version: str) -> Path:
    """Where version ``version`` of the artifact at ``path`` is filed."""
    path = Path(os.path.abspath(path))
    root = versions_root(path)
    return root / VERSIONS_DIR / version / path.relative_to(root)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a real copy
        shutil.copy2(src, dst)


def _file_version(data: Path, path: Path, record: dict[str, Any]) -> None:
    """File the freshly written ``data`` (still at its partial path) as its version of ``path``."""
    if not _ARCHIVE["enabled"]:
        return
    dest = archive_path(path, record["version_id"])
    tmp = _partial(dest)
    _clear(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if data.is_dir():
            for src in sorted(data.rglob("*")):
                target = tmp / src.relative_to(data)
                if src.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(src, target)
            tmp.mkdir(exist_ok=True)
        else:
            _link_or_copy(data, tmp)
        _clear(dest)
        os.replace(tmp, dest)
        record_path(dest).write_text(_record_json(record))
    except BaseException:
        _clear(tmp)
        raise


def _record_json(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=1, sort_keys=True)


@contextlib.contextmanager
def _staged(path: Path, tmp: Path) -> Iterator[None]:
    """On any failure, remove the partial data and the record: nothing looks complete."""
    try:
        yield
    except BaseException:
        _clear(tmp)
        _clear(record_path(path))
        raise


def _publish(tmp: Path, path: Path, record: dict[str, Any]) -> None:
    """File the version, write the record, then rename the data into place (last step)."""
    _file_version(tmp, path, record)
    if tmp.is_dir():
        # after the filing (a hard link changes ctime); the rename below moves the directory,
        # not its files, so their stats stay (:func:`describe_input`)
        record["run"]["file_stats"] = file_stats(tmp)
    if path.is_dir():
        _clear(path)
    record_path(path).write_text(_record_json(record))
    os.replace(tmp, path)


def _partial(path: Path) -> Path:
    """Hidden partial path of this process; stale partials of the same artifact are removed.

    Only one job writes a given artifact (Snakemake guarantees it), so a partial left by a
    killed earlier run of the same output is garbage.
    """
    mine = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if path.parent.exists():
        for stale in path.parent.glob(f".{path.name}.partial-*"):
            if stale != mine:
                log.info("removing %s left by an interrupted run", stale)
                _clear(stale)
    return mine


def _clear(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def _sorted_attrs(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs = dict(sorted(ds.attrs.items()))
    for name in ds.variables:
        ds[name].attrs = dict(sorted(ds[name].attrs.items()))
    return ds


#: per-frame vectors and profiles ((frame,), (frame, y)) are stored in chunks of about this size
SMALL_CHUNK_BYTES = 4 << 20


def frame_chunks(var, frame_chunk: int = 1) -> int:
    """Frames per chunk of a variable whose first dimension is ``frame``.

    Images ((frame, y, x) and more) get ``frame_chunk`` frames: the workflow reads them a frame
    or a cycle at a time. Per-frame vectors and row profiles are tiny (a 256-row profile is
    2 KiB per frame); one file per frame made the 81-frame transforms of bench-s 739 files that
    every downstream job read in 0.45 s, so they get chunks of about ``SMALL_CHUNK_BYTES``.
    """
    n = int(var.shape[0])
    if var.ndim >= 3:
        return max(1, min(frame_chunk, n))
    per_frame = max(1, math.prod(int(v) for v in var.shape[1:]) * var.dtype.itemsize)
    return max(1, min(n, max(frame_chunk, SMALL_CHUNK_BYTES // per_frame)))


def zarr_encoding(ds: xr.Dataset, *, frame_chunk: int = 1, level: int = 3) -> dict[str, dict]:
    """Deterministic encoding: Zstd (no GZip, no Blosc threads); images in chunks of
    ``frame_chunk`` frames, per-frame vectors and profiles in few chunks (:func:`frame_chunks`)."""
    from zarr.codecs import ZstdCodec

    enc: dict[str, dict] = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "OUSM" or var.ndim == 0:
            continue
        chunks = list(var.shape)
        if var.dims and var.dims[0] == "frame" and name not in ds.coords:
            chunks[0] = frame_chunks(var, frame_chunk)
        enc[str(name)] = {"compressors": [ZstdCodec(level=level)],
                          "chunks": tuple(max(1, c) for c in chunks)}
    return enc


def write_cube(ds: xr.Dataset, path: str | Path, *, step: Step, frame_chunk: int = 1) -> dict:
    """Write a dataset as a zarr v3 store with its provenance record; return the record."""
    started = _dt.datetime.now(_dt.UTC)
    path = Path(path)
    tmp = _partial(path)
    _clear(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _staged(path, tmp):
        ds = _sorted_attrs(ds)
        for name in ds.variables:
            ds[name].encoding = {}
        if "frame" in ds.dims:
            for name in list(ds.data_vars):
                if "frame" in ds[name].dims:
                    ds[name] = ds[name].chunk({"frame": frame_chunks(ds[name], frame_chunk)})
            ds = ds.assign_coords({c: ds[c].variable.compute() for c in ds.coords})
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False,
                   encoding=zarr_encoding(ds, frame_chunk=frame_chunk))
        import xarray as xr

        with xr.open_zarr(tmp, zarr_format=3, consolidated=False) as back:
            logical = logical_hash(back)
        files = store_files(tmp)
        record = _make_record(path, "zarr", logical, files, step, started)
        _publish(tmp, path, record)
    log.info("wrote %s (logical %s, version %s)", path, logical[:12], record["version_id"])
    return record


def write_table(df: pd.DataFrame, path: str | Path, *, step: Step) -> dict:
    """Write a table (.parquet or .csv/.tsv) with a sidecar provenance record.

    .parquet needs pyarrow (``pip install 'ecafm[parquet]'``).
    """
    started = _dt.datetime.now(_dt.UTC)
    path = Path(path)
    if path.suffix == ".parquet":
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise ImportError(f"{path}: writing .parquet needs pyarrow, which is not installed: "
                              "pip install 'ecafm[parquet]', or write the table as .tsv")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(path)
    with _staged(path, tmp):
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif path.suffix in (".tsv", ".txt"):
            df.to_csv(tmp, sep="\t", index=False)
        else:
            df.to_csv(tmp, index=False)
        files = {path.name: sha256_file(tmp)}
        record = _make_record(path, "table", table_logical_hash(df), files, step, started)
        _publish(tmp, path, record)
    return record


def write_file(path: str | Path, writer, *, step: Step, kind: str = "file") -> dict:
    """Write any file through ``writer(tmp_path)`` (a figure, a JSON) with a sidecar record.

    The logical hash of a plain file is its sha256.
    """
    started = _dt.datetime.now(_dt.UTC)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(path).with_suffix(path.suffix)
    with _staged(path, tmp):
        writer(tmp)
        digest = sha256_file(tmp)
        record = _make_record(path, kind, digest, {path.name: digest}, step, started)
        _publish(tmp, path, record)
    return record


def open_cube(path: str | Path, *, chunks: Any = None, dask: bool = True) -> xr.Dataset:
    """Open a cube written by :func:`write_cube` (lazily, dask-backed).

    ``dask=False``: lazily indexed numpy arrays instead, for small cubes a job loads whole (20
    segment cubes of bench-m load in 2.2 s instead of 4.8 s through dask's scheduler).
    """
    import xarray as xr

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"{path}: not a zarr v3 store (no zarr.json); was the step run?")
    import warnings

    with warnings.catch_warnings():
        # Snakemake marks directory outputs with a .snakemake_timestamp file that zarr warns about.
        warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp")
        return xr.open_zarr(path, zarr_format=3, consolidated=False,
                            chunks=None if not dask else chunks if chunks is not None else {})


def verify(path: str | Path) -> list[str]:
    """Re-hash an artifact against its record; return a list of mismatches (empty if intact)."""
    path = Path(path)
    rec = read_record(path)
    problems: list[str] = []
    recorded = rec["artifact"]["files"]
    on_disk = store_files(path) if path.exists() else {}
    if sha256_bytes(canonical_json(recorded).encode()) != rec["artifact"]["physical_sha256"]:
        problems.append(f"{record_path(path)}: file list does not match its physical_sha256 "
                        "(record edited)")
    for name in sorted(set(recorded) | set(on_disk)):
        if name not in on_disk:
            problems.append(f"{path}/{name}: missing")
        elif name not in recorded:
            problems.append(f"{path}/{name}: not in the record (added after the write)")
        elif recorded[name] != on_disk[name]:
            problems.append(f"{path}/{name}: sha256 differs from the record (modified)")
    return problems
