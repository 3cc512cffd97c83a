"""Reproducibility audit of a results folder (``ecafm audit``, rule ``audit_results``).

(a) ``hashes``: every artifact's files are re-hashed against its record (a tampered chunk, a
missing or added file, edited attributes in a ``zarr.json``, an edited record).
(b) ``reexec``: every recorded job is re-run from its recorded inputs (the filed version of an
input when the live one has moved on) into a scratch folder, through the same library functions
the rule's script calls; logical hashes must match, physical ones too when the environment (key
library versions and the imported ecafm modules) is the one the record names.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ecafm import store
from ecafm.versions import Entry, base_dir, imported_of, resolve, scan

log = logging.getLogger(__name__)

OK, MISMATCH, SKIPPED, ERROR = "ok", "MISMATCH", "skipped", "ERROR"


@dataclass(frozen=True)
class Finding:
    """One line of the audit report."""

    artifact: str
    check: str  #: "hashes" or "reexec"
    status: str  #: ok | MISMATCH | skipped | ERROR
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in (MISMATCH, ERROR)


# --------------------------------------------------------------------------- (a) hashes
def check_hashes(results_dir: str | Path, *, include_versions: bool = False) -> list[Finding]:
    """Re-hash every artifact (and, if asked, every filed version) against its record."""
    findings = []
    for e in scan(results_dir, include_versions=include_versions):
        name = e.key if e.live else f"{e.key}@{e.version_id}"
        problems = store.verify(e.path)
        findings.append(Finding(name, "hashes", MISMATCH if problems else OK, "; ".join(problems)))
    return findings


# --------------------------------------------------------------------------- (b) re-execution
Executor = Callable[[dict[str, Any], list[Path], dict[str, Path]], None]


def _step(rec: dict[str, Any], inputs: list[Path]) -> store.Step:
    return store.Step(rule=rec["step"]["rule"], params=rec["step"]["params"],
                      wildcards=rec["step"]["wildcards"], inputs=tuple(map(str, inputs)),
                      threads=int(rec.get("run", {}).get("threads") or 1))


def _first_line(p: Path) -> str:
    try:
        with open(p, encoding="utf-8") as fh:
            return fh.readline()
    except (UnicodeDecodeError, OSError):
        return ""


def split_ingest_inputs(inputs: list[Path]) -> tuple[list[Path], Path | None, Path | None]:
    """Recorded ingest inputs are raw files, then the log, then the frame sheet: tell them apart."""
    raw, ec_log, sheet = [], None, None
    for p in inputs:
        head = _first_line(p) if p.suffix.lower() in (".tsv", ".csv", ".txt") else ""
        cols = [c.strip() for c in head.replace(",", "\t").split("\t")]
        if p.suffix.lower() in (".mpr", ".mpt") or ("time_s" in cols and "current_mA" in cols):
            ec_log = p
        elif "file" in cols and "time_s" in cols:
            sheet = p
        else:
            raw.append(p)
    return raw, ec_log, sheet


def _ingest(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.ingest import QCParams, ingest

    p, wc = rec["step"]["params"], rec["step"]["wildcards"]
    raw, ec_log, sheet = split_ingest_inputs(inputs)
    ingest(raw, out["zarr"], fmt=p["format"], channel=p["channel"], ec_log=ec_log, frame_sheet=sheet,
           metal=p["metal"], positive_current_plates=p["positive_current_plates"],
           clock_offset_s=p["clock_offset_s"], frame_chunk=p["frame_chunk"], qc=QCParams(**p["qc"]),
           dataset_id=wc.get("dataset"), qc_table=out.get("table"), rule=rec["step"]["rule"],
           wildcards=wc, threads=_step(rec, inputs).threads)


def _level(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.level import LevelParams, level_cycle

    level_cycle(inputs[0], int(rec["step"]["wildcards"]["cycle"]), out["zarr"],
                params=LevelParams(**rec["step"]["params"]), step=_step(rec, inputs))


def _register_params(rec: dict[str, Any], params: dict[str, Any] | None = None):
    from ecafm.register import RegisterParams

    # records from before max_strip_scatter_px existed used every strip model that passed the
    # other checks; from before fit_k, the stable_k mask for the fit as well
    params = rec["step"]["params"] if params is None else params
    return RegisterParams(**{"max_strip_scatter_px": math.inf, "fit_k": params.get("stable_k", 3.0), **params})


def _within(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.register import run_within

    run_within(inputs[0], out["zarr"], params=_register_params(rec),
               step=_step(rec, inputs))


def _link(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.register import run_link

    # records from before the skip link have two inputs
    run_link(inputs[0], inputs[1], out["zarr"], params=_register_params(rec),
             step=_step(rec, inputs), before_path=inputs[2] if len(inputs) > 2 else None)


def _link_into(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.level import LevelParams
    from ecafm.register import run_link_into

    p = rec["step"]["params"]
    run_link_into(inputs[0], int(rec["step"]["wildcards"]["cycle"]), out["zarr"],
                  params=_register_params(rec, p["register"]), level=LevelParams(**p["level"]),
                  step=_step(rec, inputs))


def _compose(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.register import run_compose

    rules = [(store.read_record(p, missing_ok=True) or {}).get("step", {}).get("rule") for p in inputs]
    within = [p for p, r in zip(inputs, rules, strict=True) if r == "register_cycle"]
    # links per boundary: into the right cycle (link_into_cycle), or from before that change,
    # out of the left cycle (link_cycles); either way in boundary order
    links = [p for p, r in zip(inputs, rules, strict=True) if r in ("link_cycles", "link_into_cycle")]
    table = out.get("table", out["zarr"].with_suffix(".tsv"))
    # records from before loop_weight existed were composed without the loop adjustment
    params = rec["step"]["params"]
    # records from before loop_fusion existed used the mean rule
    run_compose(within, links, inputs[-1], out["zarr"], table, step=_step(rec, inputs),
                loop_weight=float(params.get("loop_weight", 0.0)),
                loop_fusion=str(params.get("loop_fusion", "mean")))


def _apply(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.register import run_apply

    # records from before resample_order existed were resampled linearly; from before the
    # aligned heights, there is no third input (the first cycle's leveled cube)
    params = rec["step"]["params"]
    run_apply(inputs[0], inputs[1], out["zarr"], step=_step(rec, inputs),
              order=int(params.get("resample_order", 1)),
              first_path=inputs[2] if len(inputs) > 2 else None,
              tip_radius_nm=float(params.get("tip_radius_nm", 0.0)))


def _rule_and_cycle(p: Path) -> tuple[str | None, int | None]:
    rec = store.read_record(p, missing_ok=True) or {}
    st = rec.get("step", {})
    c = st.get("wildcards", {}).get("cycle")
    return st.get("rule"), (int(c) if c is not None else None)


def _segment(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.segment import SegmentParams, run_segment

    params = dict(rec["step"]["params"])
    metal = params.pop("metal", "Li")
    # records from before residue_lookback existed started the residue history at cycle c-1
    params.setdefault("residue_lookback", 0)
    c = int(rec["step"]["wildcards"]["cycle"])
    reg: dict[int, Path] = {}
    transforms = None
    for p in inputs:
        rule, cyc = _rule_and_cycle(p)
        if rule == "compose_drift":
            transforms = p
        elif cyc is not None:
            reg[cyc] = p
    run_segment(c, reg[c], reg[min(reg)], transforms, out["zarr"], out["table"], prev=reg.get(c - 1),
                nxt=reg.get(c + 1), prev2=reg.get(c - 2) if params["residue_lookback"] else None,
                params=SegmentParams(**params), metal=metal, step=_step(rec, inputs))


def _track(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.segment import SegmentParams
    from ecafm.sites import run_track_sites

    d = out["zarr"].parent
    run_track_sites(list(inputs), out["zarr"], d / "sites.tsv", d / "site_cycles.tsv", d / "cycles.tsv",
                    d / "tiles.tsv", params=SegmentParams(**rec["step"]["params"]),
                    step=_step(rec, inputs))


def _lifetime(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.lifetime import LifetimeParams, run_lifetime

    p = dict(rec["step"]["params"])
    cell = {k: p.pop(k) for k in ("positive_current_plates", "electrode_area_cm2") if k in p}
    params = LifetimeParams(**{**p, "window_px": tuple(p["window_px"]),
                               "sensitivity_fractions": tuple(p["sensitivity_fractions"])})
    by_name = {q.name: q for q in inputs}
    seg0 = next(q for q in inputs if _rule_and_cycle(q)[0] == "segment_cycle")
    ec_log = next((q for q in inputs if q.suffix.lower() in (".mpr", ".mpt", ".csv")), None)
    run_lifetime(by_name["sites.tsv"], by_name["site_cycles.tsv"], by_name["cycles.tsv"], seg0,
                 next(iter(out.values())).parent, ec_log=ec_log, params=params,
                 positive_current_plates=cell.get("positive_current_plates", True),
                 electrode_area_cm2=cell.get("electrode_area_cm2"), step=_step(rec, inputs))


def _compare_datasets(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.compare import run_compare

    d = next(iter(out.values())).parent
    run_compare(inputs, list(rec["step"]["params"]["datasets"]), d / "datasets.tsv", d / "cycles.tsv",
                out_survival=d / "survival.tsv", step=_step(rec, inputs))


def _score(rec: dict[str, Any], inputs: list[Path], out: dict[str, Path]) -> None:
    from ecafm.score import run_score

    ds = rec["step"]["wildcards"]["dataset"]
    truth = next(q for q in inputs if q.name == "truth.zarr")
    results = next(q for q in inputs if q.name == "transforms.zarr").parents[2]  # results/register/{ds}/
    run_score(results, truth, next(iter(out.values())), dataset=ds, step=_step(rec, inputs))


#: Rule (or CLI command) -> how to re-run it: the library function its script calls.
REGISTRY: dict[str, Executor] = {
    "ingest_dataset": _ingest,
    "cli:ingest": _ingest,
    "level_cycle": _level,
    "register_cycle": _within,
    "link_cycles": _link,
    "link_into_cycle": _link_into,
    "compose_drift": _compose,
    "apply_registration": _apply,
    "segment_cycle": _segment,
    "track_sites": _track,
    "correlate_lifetimes": _lifetime,
    "compare_datasets": _compare_datasets,
    "score_dataset": _score,
}
#: Rules left out of re-execution on purpose, with the reason shown in the report.
NOT_REEXECUTED = {
    "plot_ingest": "figure: rendering is not byte-stable across matplotlib builds; hashes checked only",
    "plot_registration": "figure: rendering is not byte-stable across matplotlib builds; hashes checked only",
    "plot_classes": "figure: rendering is not byte-stable across matplotlib builds; hashes checked only",
    "plot_lifetimes": "figure: rendering is not byte-stable across matplotlib builds; hashes checked only",
    "plot_compare": "figure: rendering is not byte-stable across matplotlib builds; hashes checked only",
    "synth": "synthetic input data: regenerate with `ecafm synth` (its raw files are hashed as inputs)",
}


def resolve_input(entry: dict[str, Any], base: Path | None) -> tuple[Path | None, str]:
    """Where the recorded version of an input is now: the live path, its filed version, or nowhere."""
    p = resolve(entry["path"], base)
    if "version_id" in entry:
        now = store.read_record(p, missing_ok=True) if p.exists() else None
        if now is not None and now["version_id"] == entry["version_id"]:
            return p, ""
        filed = store.archive_path(p, entry["version_id"])
        if filed.exists():
            return filed, f"input {entry['path']} taken from its filed version {entry['version_id']}"
        return None, f"input {entry['path']} version {entry['version_id']} is neither live nor filed"
    if not p.exists():
        return None, f"input {entry['path']} missing"
    now = store.physical_hash(p) if p.is_dir() else store.sha256_file(p)
    if now != entry.get("sha256"):
        return None, f"input {entry['path']} changed since the record (sha256 {now[:12]})"
    return p, ""


def _same_environment(rec: dict[str, Any], modules: dict[str, str], libs: dict[str, Any]) -> list[str]:
    diffs = [f"{k} {v} -> {libs.get(k)}" for k, v in sorted(rec.get("libraries", {}).items())
             if libs.get(k) != v]
    diffs += [f"module {m} differs" for m, h in sorted(imported_of(rec).items()) if modules.get(m) != h]
    return diffs


@contextlib.contextmanager
def _dask_threads(n: int) -> Iterator[None]:
    import dask

    with dask.config.set(scheduler="threads", num_workers=max(1, n)):
        yield


def _jobs(entries: list[Entry]) -> dict[tuple[str, str], list[Entry]]:
    """Live artifacts grouped by the job that wrote them (one version id and wildcards)."""
    jobs: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        key = (e.version_id, store.canonical_json(e.record["step"].get("wildcards", {})))
        jobs.setdefault(key, []).append(e)
    return jobs


def reexecute(results_dir: str | Path, scratch: str | Path) -> list[Finding]:
    """Re-run every recorded job into ``scratch`` and compare hashes with the records."""
    scratch = Path(scratch)
    modules, libs = store.module_hashes(), store.library_versions()
    findings: list[Finding] = []
    for (_vid, _wc), group in sorted(_jobs(scan(results_dir, include_versions=False)).items(),
                                     key=lambda kv: kv[1][0].end):
        rec = group[0].record
        rule = rec["step"]["rule"]
        names = [e.key for e in group]
        if rule in NOT_REEXECUTED or rule not in REGISTRY:
            why = NOT_REEXECUTED.get(rule, f"no re-executor for rule {rule!r}")
            findings += [Finding(n, "reexec", SKIPPED, why) for n in names]
            continue
        if not rec.get("inputs"):
            findings += [Finding(n, "reexec", SKIPPED, "no inputs recorded: cannot re-run") for n in names]
            continue
        base = base_dir(group[0].path, rec["artifact"]["path"])
        resolved = [resolve_input(i, base) for i in rec["inputs"]]
        missing = [why for p, why in resolved if p is None]
        if missing:
            findings += [Finding(n, "reexec", ERROR, "; ".join(missing)) for n in names]
            continue
        notes = [why for _, why in resolved if why]
        out = {e.record["artifact"]["kind"]: scratch / e.key for e in group}
        log.info("re-running %s %s -> %s", rule, rec["step"]["wildcards"], scratch)
        try:
            with store.archiving(False), _dask_threads(int(rec.get("run", {}).get("threads") or 1)):
                REGISTRY[rule](rec, [p for p, _ in resolved], out)
        except Exception as exc:  # reported as a failed check (non-zero exit), not swallowed
            log.exception("re-running %s failed", rule)
            findings += [Finding(n, "reexec", ERROR, f"re-run failed: {type(exc).__name__}: {exc}")
                         for n in names]
            continue
        env = _same_environment(rec, modules, libs)
        for e in group:
            findings.append(_compare(e, store.read_record(scratch / e.key), env, notes))
    return findings


def _compare(e: Entry, new: dict[str, Any], env: list[str], notes: list[str]) -> Finding:
    old_a, new_a = e.record["artifact"], new["artifact"]
    detail = list(notes)
    if old_a["logical_sha256"] != new_a["logical_sha256"]:
        return Finding(e.key, "reexec", MISMATCH, "; ".join(
            [f"logical hash differs: recorded {old_a['logical_sha256'][:16]}, re-run "
             f"{new_a['logical_sha256'][:16]}", *detail, *(f"environment: {d}" for d in env)]))
    if old_a["physical_sha256"] != new_a["physical_sha256"]:
        changed = sorted(k for k in set(old_a["files"]) | set(new_a["files"])
                         if old_a["files"].get(k) != new_a["files"].get(k))
        what = f"physical hash differs ({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''})"
        if not env:
            return Finding(e.key, "reexec", MISMATCH, "; ".join([what + " in the same environment",
                                                                *detail]))
        detail.append(f"{what}; allowed: environment differs ({', '.join(env[:4])})")
    else:
        detail.insert(0, "logical and physical hashes match")
    return Finding(e.key, "reexec", OK, "; ".join(detail))


# --------------------------------------------------------------------------- both
def audit(results_dir: str | Path, *, reexec: bool = True, scratch: str | Path | None = None,
          include_versions: bool = False) -> list[Finding]:
    """Hash check of every artifact, then (if asked) re-execution of every recorded job."""
    findings = check_hashes(results_dir, include_versions=include_versions)
    if reexec:
        if scratch is None:
            with tempfile.TemporaryDirectory(prefix="ecafm-audit-") as tmp:
                findings += reexecute(results_dir, tmp)
        else:
            findings += reexecute(results_dir, scratch)
    return findings


def report_frame(findings: list[Finding]):
    """Findings as a table (artifact, check, status, detail)."""
    import pandas as pd

    return pd.DataFrame([asdict(f) for f in findings], columns=["artifact", "check", "status", "detail"])


def format_report(findings: list[Finding]) -> str:
    lines = [f"{f.status:8s} {f.check:7s} {f.artifact}" + (f"\n         {f.detail}" if f.detail else "")
             for f in findings]
    n_bad = sum(f.failed for f in findings)
    lines.append(f"{len(findings)} check(s), {n_bad} failed")
    return "\n".join(lines)


def run_audit(results_dir: str | Path, report: str | Path, *, step: store.Step,
              scratch: str | Path | None = None, reexec: bool = True) -> list[Finding]:
    """The Snakemake target: audit, write the per-artifact report (through the write helper,
    without filing a version), log it, and raise if anything failed."""
    findings = audit(results_dir, reexec=reexec, scratch=scratch)
    with store.archiving(False):
        store.write_table(report_frame(findings), report, step=step)
    for line in format_report(findings).splitlines():
        log.info("%s", line)
    failed = [f for f in findings if f.failed]
    if failed:
        raise AuditFailed(f"{len(failed)} audit check(s) failed: "
                          + ", ".join(sorted({f.artifact for f in failed})))
    return findings


class AuditFailed(RuntimeError):
    """At least one artifact failed the audit."""
