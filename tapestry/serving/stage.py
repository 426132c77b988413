"""What every serving stage shares: named numpy tensors in, named numpy tensors out.

The same stage objects run inside Triton's python backend (through tapestry.serving.triton_adapter) and in the
in-process pipeline (tapestry.serving.pipeline), so Triton's answer and the in-process answer are the same code.
BYTES tensors are numpy object arrays of `bytes`.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np


class RequestError(ValueError):
    """The request is wrong (unknown tenant, bad K, ...): Triton answers INVALID_ARGUMENT / HTTP 400."""


class Unavailable(RuntimeError):
    """Something the stage needs is unreachable for now (the online store): Triton answers UNAVAILABLE (HTTP 503)."""


# USER_KIND, what feature_lookup found out about the requester (user_encoder picks the encoder by it, rerank
# reports it as STRATEGY): no usable events at all / a stored user (+ recent events) / an unknown id with events.
# The two fallback kinds: the online store could not be read (tapestry.serving.feature_lookup), so the answer comes
# from the request's recent events alone (encoded by the served encoder) or, without any, from popularity.
USER_COLD, USER_KNOWN, USER_SESSION, USER_FALLBACK_COLD, USER_FALLBACK_RECENT = 0, 1, 2, 3, 4
STRATEGIES = {USER_COLD: "popularity", USER_KNOWN: "personalized", USER_SESSION: "session",
              USER_FALLBACK_COLD: "fallback_popularity", USER_FALLBACK_RECENT: "fallback_recent"}


class Stage:
    name: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    optional_inputs: frozenset[str] = frozenset()   # may be absent from a request (declared `optional` in Triton)

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        """One user's tensors -> its outputs; raises RequestError for a malformed request."""
        raise NotImplementedError

    def batch(self, rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """Many users at once (the rows of a dynamic batch: tapestry.serving.batching): each row's outputs, or the
        exception that row raised, so one bad row fails only its own request. Stages where one call for all rows
        is cheaper than a call per row (an encoder forward, a FAISS search) override this."""
        out: list[dict[str, np.ndarray] | Exception] = []
        for row in rows:
            try:
                out.append(self(row))
            except Exception as e:  # noqa: BLE001 - the adapter answers it for this row's request only
                out.append(e)
        return out


def checked_rows(rows: list[dict[str, np.ndarray]], check) -> tuple[list, list[tuple[int, object]]]:
    """For a vectorised `Stage.batch`: each row through `check` (its validation). Returns the answer list, holding
    each failed row's exception in its place (None elsewhere, for the batch to fill), and (row index, what `check`
    returned) for the rows that passed."""
    out: list = [None] * len(rows)
    passed = []
    for i, row in enumerate(rows):
        try:
            passed.append((i, check(row)))
        except Exception as e:  # noqa: BLE001 - fails this row only
            out[i] = e
    return out, passed


def one_row(results: list) -> dict[str, np.ndarray]:
    """`Stage.batch([row])`'s answer as `__call__` gives it: the outputs, or the row's exception raised."""
    if isinstance(results[0], Exception):
        raise results[0]
    return results[0]


@lru_cache(maxsize=8)
def _manifest_cached(path: str) -> dict:
    return json.loads(Path(path).read_text())


def export_manifest(artifact_dir: Path) -> dict:
    return _manifest_cached(str(Path(artifact_dir) / "manifest.json"))


def as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def bytes_array(values) -> np.ndarray:
    return np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values], dtype=np.object_)
