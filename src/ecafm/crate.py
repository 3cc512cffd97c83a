"""Export a results folder as a Workflow Run RO-Crate (Provenance Run Crate profile).

One ``CreateAction`` per job (the artifacts one job wrote share a version id and wildcards), with
its rule as instrument, its params as ``PropertyValue`` objects of the rule's ``FormalParameter``s,
start and end time, host and SLURM job id as ``environment``, inputs as ``object`` and outputs as
``result``; every file carries its ``sha256`` (a zarr store is a ``Dataset`` whose files are its
parts). Each job also gets the ``ControlAction`` (step -> action) the provenance profile asks for,
and the whole run one ``CreateAction`` of the Snakefile plus an ``OrganizeAction`` of the engine.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

from ecafm import store
from ecafm.versions import Entry, base_dir, resolve, scan

log = logging.getLogger(__name__)

PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
}
SNAKEMAKE_LANG = "https://w3id.org/workflowhub/workflow-ro-crate#snakemake"


def _id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:/@-]+", "_", text)


class _Builder:
    def __init__(self, results_dir: Path, with_data: bool) -> None:
        from rocrate.rocrate import ROCrate

        self.results = results_dir
        self.with_data = with_data
        self.crate = ROCrate()
        self.entities: dict[str, Any] = {}
        self.base: Path | None = None

    # ------------------------------------------------------------------ helpers
    def context(self, ident: str, props: dict[str, Any]):
        from rocrate.model import ContextEntity

        if ident not in self.entities:
            self.entities[ident] = self.crate.add(ContextEntity(self.crate, ident, properties=props))
        return self.entities[ident]

    def dest_of(self, path: Path, recorded: str) -> str:
        """Where a file goes in the crate: its path relative to the workflow's folder."""
        ap = Path(os.path.abspath(path))
        if self.base is not None and ap.is_relative_to(self.base):
            return ap.relative_to(self.base).as_posix()
        if ap.is_relative_to(self.results.parent):
            return ap.relative_to(self.results.parent).as_posix()
        return "inputs/" + _id(Path(recorded).as_posix().lstrip("/"))

    def file(self, path: Path, recorded: str, *, sha256: str | None = None, kind: str | None = None):
        """A File (or, for a directory, a Dataset with its files as parts) with sha256."""
        dest = self.dest_of(path, recorded)
        if dest in self.entities or dest + "/" in self.entities:
            return self.entities.get(dest) or self.entities[dest + "/"]
        src = path if self.with_data and path.exists() else None
        if path.is_dir():
            files = store.store_files(path)
            ds = self.crate.add_dataset(src, dest, properties={
                "name": path.name, "sha256": sha256 or store.sha256_bytes(
                    store.canonical_json(files).encode()),
                "description": "zarr v3 store; sha256 over its sorted per-file sha256 list",
                **({"encodingFormat": "application/vnd+zarr"} if kind == "zarr" else {})})
            parts = []
            for rel, digest in files.items():
                f = self.crate.add_file(None, f"{dest}/{rel}", properties={
                    "name": rel, "sha256": digest, "contentSize": (path / rel).stat().st_size})
                parts.append(f)
            ds["hasPart"] = parts
            self.entities[dest] = ds
            return ds
        props: dict[str, Any] = {"name": path.name, "alternateName": recorded}
        if path.exists():
            props["sha256"] = store.sha256_file(path)
            props["contentSize"] = path.stat().st_size
        elif sha256:
            props["sha256"] = sha256
        f = self.crate.add_file(src, dest, properties=props)
        self.entities[dest] = f
        return f

    def software(self, name: str, version: str | None) -> Any:
        return self.context(f"#software/{_id(name)}/{_id(str(version))}", {
            "@type": "SoftwareApplication", "name": name, "softwareVersion": str(version)})

    # ------------------------------------------------------------------ pieces
    def workflow(self) -> Any:
        snakefile = next((p / "Snakefile" for p in (self.base, self.results.parent) if p is not None
                          and (p / "Snakefile").exists()), None)
        props = {"name": "ecafm Snakemake workflow", "@type": ["File", "SoftwareSourceCode",
                                                              "ComputationalWorkflow", "HowTo"]}
        wf = self.crate.add_workflow(snakefile if self.with_data else None, "Snakefile", main=True,
                                     lang="snakemake", properties=props)
        if snakefile is not None:
            wf["sha256"] = store.sha256_file(snakefile)
        return wf

    def tool(self, wf: Any, rule: str, params: dict[str, Any], rec: dict[str, Any]) -> tuple[Any, Any]:
        tid = f"#rule/{_id(rule)}"
        if tid in self.entities:
            return self.entities[tid], self.entities[f"#step/{_id(rule)}"]
        code = rec.get("code", {})
        ecafm = self.software("ecafm", code.get("version"))
        if code.get("git_commit"):
            ecafm["identifier"] = code["git_commit"]
        libs = [self.software(k, v) for k, v in sorted(rec.get("libraries", {}).items()) if v]
        job_rule = rec.get("run", {}).get("snakemake_rule") or rule
        where = (f"Snakemake rule {rule}" if job_rule == rule
                 else f"step {rule}, run by Snakemake rule {job_rule}")
        tool = self.context(tid, {"@type": "SoftwareApplication", "name": rule,
                                  "description": f"{where} (script scripts/{job_rule}.py)"})
        tool["softwareRequirements"] = [ecafm, *libs]
        fps = [self.context(f"{tid}/param/{_id(k)}", {"@type": "FormalParameter", "name": k,
                                                      "additionalType": "Text"})
               for k in sorted(params)]
        if fps:
            tool["input"] = fps
        step = self.context(f"#step/{_id(rule)}", {"@type": "HowToStep", "name": rule})
        step["workExample"] = tool
        wf.append_to("hasPart", tool)
        wf.append_to("step", step)
        return tool, step

    def job(self, wf: Any, group: list[Entry], n: int) -> Any:
        rec = group[0].record
        rule = rec["step"]["rule"]
        params = _flat(rec["step"].get("params", {}))
        tool, step = self.tool(wf, rule, params, rec)
        base = base_dir(group[0].path, rec["artifact"]["path"])
        objects = []
        for inp in rec.get("inputs", []):
            p = resolve(inp["path"], base)
            objects.append(self.file(p, inp["path"], sha256=inp.get("sha256")))
        for k, v in sorted(params.items()):
            pv = self.context(f"#pv/{n}/{_id(k)}", {"@type": "PropertyValue", "name": k,
                                                    "value": store.canonical_json(v).strip('"')})
            pv["exampleOfWork"] = self.entities[f"#rule/{_id(rule)}/param/{_id(k)}"]
            objects.append(pv)
        results = [self.file(e.path, e.record["artifact"]["path"],
                             sha256=e.record["artifact"]["physical_sha256"],
                             kind=e.record["artifact"]["kind"]) for e in group]
        for e, r in zip(group, results, strict=True):
            rp = store.record_path(e.path)
            prov = self.file(rp, str(store.record_path(e.record["artifact"]["path"])))
            prov["about"] = r
            prov["encodingFormat"] = "application/json"
            prov["conformsTo"] = {"@id": f"#{e.record['schema']}"}
            self.context(f"#{e.record['schema']}", {"@type": "CreativeWork", "name": e.record["schema"]})
        run = rec.get("run", {})
        env = []
        for var, value in (("HOSTNAME", run.get("host")), ("SLURM_JOB_ID", run.get("slurm_job_id")),
                           ("ECAFM_THREADS", run.get("threads"))):
            if value is not None:
                env.append(self.context(f"#env/{n}/{var}", {"@type": "PropertyValue", "name": var,
                                                            "value": str(value)}))
        wc = rec["step"].get("wildcards", {})
        label = " ".join(f"{k}={v}" for k, v in sorted(wc.items()))
        action = self.crate.add_action(tool, identifier=f"#job/{n}", object=objects, result=results,
                                       properties={"@type": "CreateAction",
                                                   "name": f"{rule} {label}".strip(),
                                                   "startTime": run.get("start"),
                                                   "endTime": run.get("end"),
                                                   "description": f"version {rec['version_id']}"})
        if env:
            action["environment"] = env
        self.context(f"#control/{n}", {"@type": "ControlAction", "name": f"orchestrate {rule}"})
        ctrl = self.entities[f"#control/{n}"]
        ctrl["instrument"] = step
        ctrl["object"] = action
        return action


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v] if v else []


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


def export_crate(results_dir: str | Path, out: str | Path, *, with_data: bool = True) -> Path:
    """Write the Provenance Run Crate of ``results_dir`` to a folder, or a zip when ``out`` ends .zip."""
    from ecafm.audit import _jobs

    results = Path(os.path.abspath(results_dir))
    entries = scan(results, include_versions=False)
    if not entries:
        raise FileNotFoundError(f"{results_dir}: no artifact records (*.prov.json) found")
    b = _Builder(results, with_data)
    b.base = base_dir(entries[0].path, entries[0].record["artifact"]["path"])
    crate = b.crate
    crate.name = f"ecafm run: {results.name}"
    crate.description = ("In situ EC-AFM analysis run by ecafm: every artifact with its provenance "
                         "record, one CreateAction per job (Provenance Run Crate).")
    crate.license = "https://spdx.org/licenses/BSD-3-Clause"
    profiles = [b.context(uri, {"@type": "CreativeWork", "name": name, "version": uri.rsplit("/", 1)[1]})
                for uri, name in PROFILES.items()]
    crate.root_dataset["conformsTo"] = profiles
    wf = b.workflow()
    jobs = sorted(_jobs(entries).values(), key=lambda g: g[0].end)
    actions = [b.job(wf, g, n) for n, g in enumerate(jobs)]
    # The workflow run as a whole: raw inputs (no record) in, every artifact out.
    produced = {id(r) for a in actions for r in a.get("result", [])}
    raw = {o.id: o for a in actions for o in a.get("object", [])
           if o.type in ("File", "Dataset") and id(o) not in produced and "sha256" in o}
    results_all = [r for a in actions for r in a.get("result", [])]
    engine = b.software("snakemake", entries[0].record.get("libraries", {}).get("snakemake"))
    engine["url"] = "https://snakemake.github.io"
    run = crate.add_action(wf, identifier="#run", object=list(raw.values()), result=results_all,
                           properties={"@type": "CreateAction", "name": "ecafm workflow run",
                                       "startTime": min(a.get("startTime") for a in actions),
                                       "endTime": max(a.get("endTime") for a in actions)})
    org = b.context("#organize", {"@type": "OrganizeAction", "name": "Snakemake run"})
    org["instrument"] = engine
    org["object"] = [b.entities[f"#control/{n}"] for n in range(len(actions))]
    org["result"] = run
    crate.root_dataset["conformsTo"] = profiles + [p for p in _as_list(crate.root_dataset["conformsTo"])
                                                   if p not in profiles]
    out = Path(out)
    with warnings.catch_warnings():
        # the files of a zarr store are described one by one but copied with the store
        warnings.filterwarnings("ignore", message="No source for", category=UserWarning)
        if out.suffix == ".zip":
            out.parent.mkdir(parents=True, exist_ok=True)
            crate.write_zip(out)
        else:
            crate.write(out)
    log.info("crate %s: %d jobs, %d data entities", out, len(actions), len(b.entities))
    return out
