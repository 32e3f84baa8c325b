"""Running the analysis notebooks: papermill executes a notebook with parameters and keeps the executed copy.

The notebooks under `notebooks/` are the analyses; the workflow runs each one with the paths of its input
tables and output files as parameters, in the workflow's working directory, so relative paths resolve the
same way they do for every other rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import papermill
from jupyter_client.manager import AsyncKernelManager
from traitlets import default


class EncryptedKernelManager(AsyncKernelManager):
    """A kernel manager that gives each kernel CurveZMQ keys when its kernelspec supports them.

    Kernels talk to papermill over local TCP sockets; with keys the traffic is encrypted and the kernel does
    not warn, on every notebook, that it runs over TCP in plain text. IPC sockets would avoid the warning
    too, but two kernels started at once (parallel notebook jobs) crossed messages over them.
    """

    @default("transport_encryption")
    def _encrypt_when_supported(self) -> str:
        return "auto"


def run_notebook(
    notebook: str | os.PathLike,
    executed: str | os.PathLike,
    parameters: Mapping[str, Any],
    cwd: str | os.PathLike = ".",
) -> Path:
    """Execute `notebook` with `parameters` (injected after its `parameters` cell) and save it as `executed`.

    Raises papermill's PapermillExecutionError, naming the failing cell, when a cell fails; the executed copy
    is still written, so the traceback can be read in context.
    """
    executed = Path(executed)
    executed.parent.mkdir(parents=True, exist_ok=True)
    os.environ["MPLBACKEND"] = "Agg"  # the kernel inherits it: no display is ever needed
    papermill.execute_notebook(
        str(notebook),
        str(executed),
        parameters=dict(parameters),
        cwd=str(cwd),
        kernel_name="python3",
        progress_bar=False,
        log_output=False,
        kernel_manager_class=EncryptedKernelManager,
    )
    return executed


def cell_seconds(executed: str | os.PathLike) -> float:
    """The seconds an executed notebook's cells took, by the durations papermill recorded for each; what a
    notebook job takes beyond them is the kernel's start, its shutdown and papermill's own work."""
    cells = json.loads(Path(executed).read_text())["cells"]
    return sum(cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0 for cell in cells)
