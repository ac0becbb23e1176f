"""Send a job's stdout and stderr (prints, tqdm progress, tracebacks) to its log file."""

from __future__ import annotations

import contextlib
import sys
import traceback
from pathlib import Path


@contextlib.contextmanager
def log_to(path: str | Path):
    """Redirect stdout/stderr to ``path`` for the block; a failure's traceback lands there and re-raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            yield
        except BaseException:
            traceback.print_exc(file=fh)
            raise
