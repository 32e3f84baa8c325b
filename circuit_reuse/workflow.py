"""Small helpers shared by the scripts that Snakemake runs."""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class _Tee:
    """A stream that writes to the terminal and to a job's log file, so progress stays visible."""

    def __init__(self, *streams: TextIO):
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()

    def isatty(self) -> bool:
        return self._streams[0].isatty()


@contextlib.contextmanager
def job_logging(log_path: str | Path) -> Iterator[None]:
    """Copy everything the job prints (progress bars included) into its Snakemake log file."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        except BaseException:
            # Snakemake shows a failed job's log, not its stderr: the traceback belongs in the log.
            traceback.print_exc()
            raise
        finally:
            sys.stdout, sys.stderr = out, err
