"""RO-Crate export: parse the crate back with rocrate and check every file's sha256 and each job."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from ecafm.cli import main
from ecafm.crate import export_crate
from tests.test_audit import small_run


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _types(e) -> list[str]:
    return e.type if isinstance(e.type, list) else [e.type]


@pytest.fixture
def run(tmp_path):
    return small_run(tmp_path)


def test_crate_round_trip_checks_every_sha256(run, tmp_path):
    from rocrate.rocrate import ROCrate

    out = export_crate(run, tmp_path / "crate")
    crate = ROCrate(out)
    files = [e for e in crate.get_entities() if "File" in _types(e) and e.get("sha256")]
    for e in files:
        assert _sha(out / e.id) == e["sha256"], e.id
    # every file of every artifact under results/ is in the crate with its sha256
    on_disk = {p.relative_to(run.parent).as_posix() for p in run.rglob("*")
               if p.is_file() and ".versions" not in p.parts}
    assert on_disk <= {e.id for e in files}

    ids = {e.id for e in crate.get_entities()}
    assert {"https://w3id.org/ro/wfrun/provenance/0.5", "https://w3id.org/ro/wfrun/workflow/0.5"} <= ids
    actions = [e for e in crate.get_entities() if "CreateAction" in _types(e) and e.id.startswith("#job/")]
    assert sorted(a["instrument"]["name"] for a in actions) == ["ingest_dataset", "level_cycle", "level_cycle"]
    for a in actions:
        assert a["startTime"] <= a["endTime"]
        assert {pv["name"] for pv in a["environment"]} >= {"HOSTNAME"}
        outputs = a["result"]
        assert outputs and all(o.get("sha256") for o in outputs)
    level = next(a for a in actions if a["instrument"]["name"] == "level_cycle")
    params = {o["name"]: o["value"] for o in level["object"] if "PropertyValue" in _types(o)}
    assert params == {"order": "1", "n_iter": "3", "k_sigma": "3.0", "scars": "false"}
    assert [o.id for o in level["object"] if "Dataset" in _types(o)] == ["results/cubes/cell.zarr/"]
    assert level["instrument"]["description"] == ("step level_cycle, run by Snakemake rule register_cycle "
                                                  "(script scripts/register_cycle.py)")
    ingest = next(a for a in actions if a["instrument"]["name"] == "ingest_dataset")
    assert ingest["instrument"]["description"].startswith("Snakemake rule ingest_dataset")
    ecafm = next(s for s in level["instrument"]["softwareRequirements"] if s["name"] == "ecafm")
    assert ecafm["softwareVersion"]
    assert crate.mainEntity.id == "Snakefile"


def test_crate_as_zip_from_the_cli(run, tmp_path):
    assert main(["export-crate", str(run), "-o", str(tmp_path / "c.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "c.zip") as z:
        names = set(z.namelist())
    assert "ro-crate-metadata.json" in names and "results/cubes/cell.qc.tsv" in names
