"""Integrity of the workflow's binary files: checkpoints, training states and prepared data.

All of them are zip containers (torch archives and ``.npz``) whose members carry CRC-32 checksums;
neither torch nor numpy verifies them on read, so a truncated or bit-flipped file loads silently
(or fails with an error that names no file). :func:`check_archive` reads every member against its
checksum; a failure is a :class:`DamagedFileError`, one line that names the file, what is wrong and
the command that recovers.

No heavy imports: the entry point (``memplast.cli``) catches :class:`OneLineError`.
"""

from __future__ import annotations

import zipfile


def rerun_hint(path) -> str:
    """The recovery for a damaged workflow output: rerun the job that writes it."""
    return f"recover: rerun your snakemake command with --forcerun {path} (remakes it and what depends on it)"


class OneLineError(RuntimeError):
    """An error whose message says it all (cause and recovery): the entry point logs it as one line."""


class DamagedFileError(OneLineError):
    """A file that fails its integrity check. ``str()`` is one line: file, what is wrong, recovery."""

    def __init__(self, path, what: str, recovery: str | None = None):
        self.path, self.what = str(path), " ".join(str(what).split())
        self.recovery = recovery if recovery is not None else rerun_hint(path)
        super().__init__(f"damaged file {self.path}: {self.what}; {self.recovery}")


def check_archive(path, recovery: str | None = None, name=None) -> None:
    """Raise :class:`DamagedFileError` unless ``path`` is a complete zip archive whose every member
    matches its CRC-32 (a missing file raises ``FileNotFoundError`` as usual). ``name``: the file
    the message names (default ``path``; a temporary file names its destination)."""
    name = path if name is None else name
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated (no central directory), garbled headers, short reads
        raise DamagedFileError(name, f"not a complete archive ({type(exc).__name__}: {exc})", recovery) from None
    if bad is not None:
        raise DamagedFileError(name, f"member {bad} fails its checksum", recovery)
