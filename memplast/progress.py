"""Progress bars that go through logging: one log line per update, so bars of parallel jobs never
interleave on a terminal and land in each job's log file (SLURM keeps no stderr bars).

``from memplast.progress import tqdm`` is a drop-in for ``tqdm.tqdm``.
"""

from __future__ import annotations

import logging

from tqdm import tqdm as _tqdm

BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


class LogStream:
    """A file-like sink for tqdm that logs each new bar state as one INFO line."""

    def __init__(self, logger: logging.Logger):
        self.logger, self.last = logger, ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and line != self.last:
            self.last = line
            self.logger.info("%s", line)

    def flush(self) -> None:
        pass


def tqdm(iterable=None, *, logger: str = "memplast.progress", **kwargs):
    """``tqdm.tqdm`` writing to the logger ``logger`` (default every 10 s, no bar glyphs)."""
    kwargs.setdefault("mininterval", 10)
    kwargs.setdefault("bar_format", BAR_FORMAT)
    kwargs.pop("file", None)
    return _tqdm(iterable, file=LogStream(logging.getLogger(logger)), ascii=True, **kwargs)
