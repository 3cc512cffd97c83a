"""Physics-parameterized synthetic EC-AFM data sets with full ground truth.

API
---
- :func:`generate` (params or preset, seed) -> :class:`SynthResult` (frames held in memory;
  small presets);
- :func:`write_dataset` (result, out_dir) -> provenance record of ``truth.zarr``;
- :func:`synth` (preset, seed, out_dir, overrides=None): streams frame by frame to disk (any
  size; what the CLI calls).

Random streams: one seed spawns independent streams for substrate, nucleation, stripping,
drift and noise, so presets that differ only in instrument settings share the true history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecafm.synth.generator import FrameOut, Generator
from ecafm.synth.presets import PRESETS, SynthParams, resolve_params

__all__ = ["PRESETS", "SynthParams", "SynthResult", "FrameOut", "Generator", "generate",
           "write_dataset", "synth", "resolve_params"]


@dataclass
class SynthResult:
    """A generated experiment with all its frames in memory."""

    generator: Generator
    frames: list[FrameOut]

    @property
    def params(self) -> SynthParams:
        return self.generator.params


def _make(preset: str | SynthParams, seed: int,
          overrides: Mapping[str, Any] | str | Path | None) -> Generator:
    params = resolve_params(preset, overrides)
    name = preset if isinstance(preset, str) else "custom"
    return Generator(params, seed, preset=name)


def generate(preset: str | SynthParams, seed: int, *,
             overrides: Mapping[str, Any] | str | Path | None = None) -> SynthResult:
    """Generate an experiment in memory (use :func:`synth` for large presets)."""
    gen = _make(preset, seed, overrides)
    return SynthResult(gen, list(gen.frames()))


def write_dataset(result: SynthResult, out_dir: str | Path) -> dict:
    """Write raw frames, log, sheets and truth of a generated experiment to ``out_dir``."""
    from ecafm.synth.writer import write_frames

    return write_frames(result.generator, result.frames, out_dir)


def synth(preset: str, seed: int, out_dir: str | Path,
          overrides: Mapping[str, Any] | str | Path | None = None) -> dict:
    """Generate and write a data set frame by frame (memory stays at a few frames).

    Parameters
    ----------
    preset : str
        One of :data:`PRESETS` (demo, null, bench-s, bench-m, bench-l, ladder-0..4).
    seed : int
        Seed of every random stream.
    out_dir : str or pathlib.Path
        Output folder (created).
    overrides : mapping or path of a YAML file, optional
        Parameter values merged over the preset; unknown keys raise ValueError.

    Returns
    -------
    dict
        Provenance record of ``out_dir/truth.zarr``.
    """
    from ecafm.synth.writer import write_frames

    gen = _make(preset, seed, overrides)
    return write_frames(gen, gen.frames(), out_dir)
