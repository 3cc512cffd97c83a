"""Exceptions that name the file (and frame) at fault and what to do about it."""

from __future__ import annotations

from pathlib import Path


class EcafmError(Exception):
    """Base class of ecafm's user-facing errors."""


class InputFileError(EcafmError, ValueError):
    """A raw input file cannot be used. The message names the file, the frame and the cause."""

    def __init__(self, path: str | Path, cause: str, *, frame: int | None = None, hint: str = ""):
        self.path = str(path)
        self.frame = frame
        self.cause = cause
        self.hint = hint
        where = f"{self.path}" + (f" (frame {frame})" if frame is not None else "")
        msg = f"{where}: {cause}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)

    def __reduce__(self):
        # so that the error crosses a process pool intact (Exception pickles only its message)
        import functools

        return functools.partial(type(self), frame=self.frame, hint=self.hint), (self.path, self.cause)


class ConfigError(EcafmError, ValueError):
    """The configuration or a sample sheet is invalid."""
