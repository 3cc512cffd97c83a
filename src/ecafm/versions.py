"""Versions of artifacts: find every record under a results folder, list a dataset's versions with
what differs between them (``ecafm history``), and name the artifacts whose code, libraries or
inputs changed since they were written (``ecafm status``).

Live artifacts sit at their Snakemake paths; every version (the live one included) is also filed
by the write helper under ``<root>/.versions/<version_id>/<relative path>`` (see ``ecafm.store``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecafm import store

log = logging.getLogger(__name__)

#: Rules whose records are diagnostics about other artifacts, not results: never audited.
DIAGNOSTIC_RULES = frozenset({"audit_results"})


@dataclass(frozen=True)
class Entry:
    """One artifact version found on disk."""

    key: str  #: artifact path relative to the results folder (same for all versions of it)
    path: Path  #: where this version's data are
    record: dict[str, Any]
    live: bool  #: at its workflow path (False: a filed version under .versions/)

    @property
    def version_id(self) -> str:
        return self.record["version_id"]

    @property
    def rule(self) -> str:
        return self.record["step"]["rule"]

    @property
    def end(self) -> str:
        return self.record.get("run", {}).get("end", "")


def scan(results_dir: str | Path, *, include_versions: bool = True,
         include_diagnostics: bool = False) -> list[Entry]:
    """Every artifact record under ``results_dir`` (live ones, and filed versions if asked)."""
    root = Path(results_dir)
    out = []
    for rp in sorted(root.rglob("*" + store.SIDECAR_SUFFIX)):
        rel = rp.relative_to(root).parts
        if any(".partial-" in part for part in rel):
            continue
        art = rp.with_name(rp.name[: -len(store.SIDECAR_SUFFIX)])
        if store.VERSIONS_DIR in rel:
            if not include_versions:
                continue
            i = rel.index(store.VERSIONS_DIR)
            key_parts = rel[:i] + rel[i + 2:]
            live = False
        else:
            key_parts = rel
            live = True
        key = Path(*key_parts).as_posix()[: -len(store.SIDECAR_SUFFIX)]
        rec = store.read_record(art)
        if rec["step"]["rule"] in DIAGNOSTIC_RULES and not include_diagnostics:
            continue
        out.append(Entry(key=key, path=art, record=rec, live=live))
    return out


def dataset_of(entry: Entry) -> str | None:
    """Dataset of an artifact: its ``dataset`` wildcard, or the cube's ``dataset`` path element."""
    wc = entry.record["step"].get("wildcards", {})
    return wc.get("dataset")


def _matches_dataset(entry: Entry, dataset: str) -> bool:
    if dataset_of(entry) is not None:
        return dataset_of(entry) == dataset
    parts = Path(entry.key).parts
    return dataset in parts or any(p.split(".")[0] == dataset for p in parts)


# --------------------------------------------------------------------------- differences
def imported_of(rec: dict[str, Any]) -> dict[str, str]:
    """Modules a record's writer ran: the imported ones (/2) or the whole package (/1)."""
    code = rec.get("code", {})
    return dict(code.get("imported") or code.get("modules") or {})


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys: {"qc": {"k": 1}} -> {"qc.k": 1}."""
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _input_ids(rec: dict[str, Any]) -> dict[str, str | None]:
    return {i["path"]: i.get("version_id") or i.get("sha256") for i in rec.get("inputs", [])}


def diff_records(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, tuple[Any, Any]]]:
    """What differs between two records: params, wildcards, code modules, inputs, libraries."""
    code = _changes(imported_of(old), imported_of(new))
    return {k: v for k, v in {
        "params": _changes(_flatten(old["step"].get("params", {})), _flatten(new["step"].get("params", {}))),
        "wildcards": _changes(old["step"].get("wildcards", {}), new["step"].get("wildcards", {})),
        "code": {m: ("removed" if b is None else "added" if a is None else "changed", None)
                 for m, (a, b) in code.items()},
        "inputs": _changes(_input_ids(old), _input_ids(new)),
        "libraries": _changes(old.get("libraries", {}), new.get("libraries", {})),
        "rule": _changes({"rule": old["step"]["rule"]}, {"rule": new["step"]["rule"]}),
    }.items() if v}


def describe_diff(diff: dict[str, dict[str, tuple[Any, Any]]]) -> list[str]:
    """One line per difference, for people."""
    lines = []
    for section, changes in diff.items():
        for k, (a, b) in changes.items():
            if section == "code":
                lines.append(f"code: module {k} {a}")
            elif section == "inputs":
                lines.append(f"input {k}: {_short(a)} -> {_short(b)}")
            else:
                lines.append(f"{section}: {k} {a!r} -> {b!r}")
    return lines


def _short(v: Any) -> str:
    return "absent" if v is None else str(v)[:16]


# --------------------------------------------------------------------------- history
def history(results_dir: str | Path, *, dataset: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Versions of every artifact (of one dataset if given), oldest first, each with its diff
    against the version before it; ``current`` marks the one at the workflow path."""
    entries = scan(results_dir)
    if dataset is not None:
        entries = [e for e in entries if _matches_dataset(e, dataset)]
    by_key: dict[str, dict[str, Entry]] = {}
    current: dict[str, str] = {}
    for e in entries:
        by_key.setdefault(e.key, {})
        if e.live:
            current[e.key] = e.version_id
        # the filed copy and the live one of the same version are one version
        by_key[e.key].setdefault(e.version_id, e)
    out: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(by_key):
        versions = sorted(by_key[key].values(), key=lambda e: e.end)
        rows = []
        for i, e in enumerate(versions):
            row = {
                "version_id": e.version_id,
                "current": current.get(key) == e.version_id,
                "rule": e.rule,
                "written": e.end,
                "logical_sha256": e.record["artifact"]["logical_sha256"],
                "path": str(e.path),
                "changes": describe_diff(diff_records(versions[i - 1].record, e.record)) if i else [],
            }
            rows.append(row)
        out[key] = rows
    return out


def format_history(hist: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for key, rows in hist.items():
        lines.append(f"{key}: {len(rows)} version(s)")
        for r in rows:
            mark = "*" if r["current"] else " "
            lines.append(f" {mark} {r['version_id']}  {r['written'][:19]}  {r['rule']}  "
                         f"logical {r['logical_sha256'][:12]}")
            for c in r["changes"]:
                lines.append(f"      {c}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- status
def base_dir(actual: Path, recorded: str) -> Path | None:
    """Folder the record's relative paths are relative to (Snakemake's working directory)."""
    rp = Path(recorded)
    if rp.is_absolute():
        return None
    parts = Path(os.path.abspath(actual)).parts
    n = len(rp.parts)
    if n < len(parts) and tuple(parts[-n:]) == rp.parts:
        return Path(*parts[:-n])
    return None


def resolve(path: str, base: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or base is None else base / p


def stale_reasons(entry: Entry, *, modules: dict[str, str] | None = None,
                  libraries: dict[str, Any] | None = None) -> list[str]:
    """Why a live artifact is out of date: changed modules it imported, library versions, inputs."""
    rec = entry.record
    modules = store.module_hashes() if modules is None else modules
    libraries = store.library_versions() if libraries is None else libraries
    reasons = []
    for mod, h in sorted(imported_of(rec).items()):
        now = modules.get(mod)
        if now is None:
            reasons.append(f"module {mod} removed")
        elif now != h:
            reasons.append(f"module {mod} changed")
    for lib, v in sorted(rec.get("libraries", {}).items()):
        if libraries.get(lib, v) != v:
            reasons.append(f"{lib} {v} -> {libraries.get(lib)}")
    base = base_dir(entry.path, rec["artifact"]["path"])
    for inp in rec.get("inputs", []):
        p = resolve(inp["path"], base)
        if not p.exists():
            reasons.append(f"input {inp['path']} missing")
            continue
        if "version_id" in inp:
            now_rec = store.read_record(p, missing_ok=True)
            if now_rec is None:
                reasons.append(f"input {inp['path']} has no record any more")
            elif now_rec["version_id"] != inp["version_id"]:
                reasons.append(f"input {inp['path']}'s version changed "
                               f"({inp['version_id']} -> {now_rec['version_id']})")
        else:
            now = store.physical_hash(p) if p.is_dir() else store.sha256_file(p)
            if now != inp.get("sha256"):
                reasons.append(f"input {inp['path']} changed (sha256 {inp.get('sha256', '')[:12]} -> "
                               f"{now[:12]})")
    return reasons


def status(results_dir: str | Path) -> dict[str, list[str]]:
    """Every live artifact under ``results_dir`` with the reasons it is out of date (empty: current)."""
    modules, libraries = store.module_hashes(), store.library_versions()
    return {e.key: stale_reasons(e, modules=modules, libraries=libraries)
            for e in scan(results_dir, include_versions=False)}
