"""Command line interface: ``ecafm inspect``, ``ecafm ingest``, ``ecafm synth``, ``ecafm verify``.

Heavy libraries are imported inside the subcommands so that ``ecafm --help`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Sequence

log = logging.getLogger("ecafm")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ecafm.errors import InputFileError
    from ecafm.io.afm import describe
    from ecafm.io.echem import describe_log

    infos, failed = [], 0
    for path in args.files:
        try:
            infos.append(describe(path))
        except InputFileError as exc:
            if "not a supported AFM format" in exc.cause:  # a potentiostat log, perhaps
                try:
                    infos.append(describe_log(path, positive_current_plates=not args.negative_current_plates))
                    continue
                except InputFileError:
                    pass
            failed += 1
            infos.append({"path": path, "error": str(exc)})
    if args.json:
        json.dump(infos, sys.stdout, indent=1)
        print()
    else:
        for d in infos:
            if "error" in d:
                print(f"{d['path']}\n  ERROR: {d['error']}")
                continue
            if "cycles" in d:
                print(_log_summary(d))
                continue
            ts = [t for t in d["timestamps"] if t]
            print(f"{d['path']}\n  format {d['format']}, {d['frames']} frame(s) of "
                  f"{d['shape_px'][0]}x{d['shape_px'][1]} px, scan {d['scan_size_nm'][0]:g}x"
                  f"{d['scan_size_nm'][1]:g} nm, pixel {d['pixel_size_nm'][0]:.6g} nm (scan/N)\n"
                  f"  channels: {', '.join(f'{c} [{u}]' for c, u in d['units'].items())}\n"
                  f"  height channel: {d['height_channel']}, range {d['height_range_nm'][0]:.4g} .. "
                  f"{d['height_range_nm'][1]:.4g} nm\n"
                  f"  acquired: {ts[0] if ts else 'unknown'}"
                  + (f" .. {ts[-1]}" if len(ts) > 1 else ""))
    return 1 if failed else 0


def _log_summary(d: dict) -> str:
    """``ecafm inspect`` text of a potentiostat log (:func:`ecafm.io.echem.describe_log`)."""
    sign = "positive" if d["positive_current_plates"] else "negative"
    out = [d["path"], f"  format {d['format']}, {d['rows']} rows, t = {d['time_s'][0]:g} .. {d['time_s'][1]:g} s, "
                      f"start {d['start_time'] or 'unknown'}"]
    if d["first_plating_log_half_cycle"] is None:
        out.append(f"  nothing plates with {sign} current plating (try the other sign convention)")
        return "\n".join(out)
    out.append(f"  with {sign} current plating: first plating = the log's half-cycle {d['first_plating_log_half_cycle']}"
               + (f" ({d['before_cycling_s']:g} s before it are cycle -1)" if d["before_cycling_s"] > 0 else "")
               + f"; {d['n_cycles']} cycle(s)")
    for c in d["cycles"]:
        ce = f"{100 * c['ce']:.1f} %" if c["ce"] is not None else "- (no stripping)"
        out.append(f"  cycle {c['cycle']:3d}: plated {c['plated_C']:.4g} C, stripped {c['stripped_C']:.4g} C, CE {ce}")
    # The median cycle, not any: a first cycle that plates a little (a formation step, a cell
    # charged from a partial state) has a CE far above 100 % with the right sign. Metal plated on
    # the imaged electrode never all comes back, so a median above 100 % is the sign's fault.
    ces = [c["ce"] for c in d["cycles"] if c["ce"] is not None]
    if ces and statistics.median(ces) > 1.0:
        flip = "without" if not d["positive_current_plates"] else "with"
        out.append(f"  CE above 100 % in {sum(ce > 1.0 for ce in ces)} of {len(ces)} cycles (median "
                   f"{100 * statistics.median(ces):.1f} %): is the sign convention right? (inspect {flip} "
                   "--negative-current-plates)")
    return "\n".join(out)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from ecafm.ingest import ingest

    rec = ingest(args.sources, args.output, fmt=args.format, channel=args.channel, ec_log=args.log,
                 frame_sheet=args.frames, metal=args.metal,
                 positive_current_plates=not args.negative_current_plates,
                 clock_offset_s=args.clock_offset, qc_table=args.qc_table, rule="cli:ingest")
    print(f"{args.output}: version {rec['version_id']}, logical {rec['artifact']['logical_sha256'][:16]}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from ecafm.synth import synth

    synth(args.preset, args.seed, args.out_dir, overrides=args.params)
    print(f"{args.out_dir}: preset {args.preset}, seed {args.seed}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from ecafm.store import verify

    bad = 0
    for path in args.artifacts:
        problems = verify(path)
        bad += bool(problems)
        print(f"{path}: {'OK' if not problems else 'MISMATCH'}")
        for p in problems:
            print(f"  {p}")
    return 1 if bad else 0


def _cmd_history(args: argparse.Namespace) -> int:
    from ecafm.versions import format_history, history

    hist = history(args.results_dir, dataset=args.dataset)
    if args.json:
        json.dump(hist, sys.stdout, indent=1)
        print()
    else:
        print(format_history(hist) or f"{args.results_dir}: no artifact records")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ecafm.versions import status

    stale = 0
    for key, reasons in status(args.results_dir).items():
        stale += bool(reasons)
        print(f"{key}: {'OUT OF DATE' if reasons else 'current'}")
        for r in reasons:
            print(f"  {r}")
    return 1 if stale and args.exit_code else 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from ecafm.audit import audit, format_report, report_frame

    findings = audit(args.results_dir, reexec=not args.hashes_only, scratch=args.scratch,
                     include_versions=args.versions)
    print(format_report(findings))
    if args.report:
        report_frame(findings).to_csv(args.report, sep="\t", index=False)
    return 1 if any(f.failed for f in findings) else 0


def _cmd_export_crate(args: argparse.Namespace) -> int:
    from ecafm.crate import export_crate

    out = export_crate(args.results_dir, args.output, with_data=not args.metadata_only)
    print(f"{out}: Workflow Run RO-Crate of {args.results_dir}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from ecafm.score import format_scores, score_run

    scores = score_run(args.results, args.truth, dataset=args.dataset)
    if args.json:
        json.dump(scores, sys.stdout, indent=1, default=float)
        print()
    else:
        print(format_scores(scores))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecafm", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=1, help="more log output (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="show format, channels, frames, size, pixel size, timestamps; of a potentiostat log its cycles")
    s.add_argument("files", nargs="+")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--negative-current-plates", action="store_true",
                   help="for a potentiostat log: negative current plates the imaged electrode")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("ingest", help="convert raw files (+ log or frame sheet) into a zarr cube")
    s.add_argument("sources", nargs="+", help="files, folders or globs")
    s.add_argument("-o", "--output", required=True, help="output cube (.zarr)")
    s.add_argument("--log", help="electrochemistry log (.mpr, .mpt or CSV)")
    s.add_argument("--frames", help="frame sheet (TSV: file, time_s, ...)")
    s.add_argument("--format", default="auto")
    s.add_argument("--channel", default=None, help="height channel name (default: auto)")
    s.add_argument("--metal", default="Li")
    s.add_argument("--negative-current-plates", action="store_true",
                   help="negative current plates the imaged electrode (default: positive plates)")
    s.add_argument("--clock-offset", type=float, default=0.0,
                   help="seconds to add to frame times to put them on the log's clock")
    s.add_argument("--qc-table", default=None, help="write the per-frame QC table here (TSV)")
    s.set_defaults(func=_cmd_ingest)

    s = sub.add_parser("synth", help="generate a synthetic EC-AFM dataset with its ground truth")
    s.add_argument("out_dir")
    s.add_argument("--preset", default="demo")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--params", default=None, help="YAML file of parameter overrides")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("score", help="accuracy of a run against a synthetic generator's truth")
    s.add_argument("results", help="results folder (workflow results/, or the in-process layout of "
                   "ecafm.pipeline)")
    s.add_argument("truth", help="truth.zarr of the generator")
    s.add_argument("--dataset", help="the data set the truth belongs to, when results/ holds several")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_score)

    s = sub.add_parser("verify", help="re-hash artifacts against their provenance records")
    s.add_argument("artifacts", nargs="+")
    s.set_defaults(func=_cmd_verify)

    s = sub.add_parser("history", help="versions of a dataset's artifacts and what differs between them")
    s.add_argument("results_dir", nargs="?", default="results")
    s.add_argument("--dataset", default=None, help="only this dataset's artifacts")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_history)

    s = sub.add_parser("status", help="artifacts whose imported modules, libraries or inputs changed")
    s.add_argument("results_dir", nargs="?", default="results")
    s.add_argument("--exit-code", action="store_true", help="exit 1 when anything is out of date")
    s.set_defaults(func=_cmd_status)

    s = sub.add_parser("audit", help="re-hash every artifact and re-run every recorded job")
    s.add_argument("results_dir", nargs="?", default="results")
    s.add_argument("--hashes-only", action="store_true", help="skip re-execution")
    s.add_argument("--versions", action="store_true", help="also re-hash filed earlier versions")
    s.add_argument("--scratch", default=None, help="re-run into this folder (default: a temp folder)")
    s.add_argument("--report", default=None, help="write the per-artifact report here (TSV)")
    s.set_defaults(func=_cmd_audit)

    s = sub.add_parser("export-crate", help="write a Workflow Run RO-Crate (Provenance Run Crate)")
    s.add_argument("results_dir", nargs="?", default="results")
    s.add_argument("-o", "--output", required=True, help="crate folder, or a .zip file")
    s.add_argument("--metadata-only", action="store_true",
                   help="describe the files (with sha256) without copying them into the crate")
    s.set_defaults(func=_cmd_export_crate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(0 if args.quiet else args.verbose)
    from ecafm.errors import EcafmError

    try:
        return int(args.func(args) or 0)
    except EcafmError as exc:
        print(f"ecafm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
