"""One stage timer for the training pipeline and the demo: `with Stage(log, "name") as s:` logs one line."""
from __future__ import annotations

import time


class Stage:
    """Logs `[prefix] name: detail (1.2s)` when the block ends without an error; `seconds` holds the wall time."""

    def __init__(self, log, name: str, prefix: str = "train"):
        self.log, self.name, self.prefix, self.detail = log, name, prefix, ""
        self.seconds = 0.0

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.seconds = time.perf_counter() - self.t0
        if exc_type is None:
            self.log(f"[{self.prefix}] {self.name}: {self.detail}{' ' if self.detail else ''}({self.seconds:.1f}s)")
