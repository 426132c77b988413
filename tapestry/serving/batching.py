"""Dynamic batching: the requests of one Triton `execute` become rows, the stage handles all rows at once.

With `max_batch_size > 0` in a model's config.pbtxt every tensor carries a leading batch dimension: a request of
b users sends `[b, *dims]` (b = 1 for one user), and Triton's dynamic batcher hands one `execute` every request
that queued while the model was busy. The stages keep their per-user contract (the tensors of one user, as the
in-process pipeline passes them); this module

- splits each request's tensors into rows (`split_rows`),
- lets the stage answer every row of every queued request in one call (`Stage.batch`, vectorised where it pays:
  one encoder forward, one FAISS search),
- stacks each request's rows back into its response (`stack_rows`), padding variable-length outputs with the
  contract's padding values: item index 0 (never a real item: every stage drops it), `b""` for ids, 0 for numbers.

A row that fails fails only its own request; the other requests of the batch are answered. `max_batch_size: 0`
(an export made with `--max-batch-size 0`, or by an older tapestry) still works: each request is one row.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tapestry.serving.stage import RequestError

DEFAULT_MAX_BATCH_SIZE = 64   # rows per request, and the most rows one execute takes from the queue
MODELS = ("feature_lookup", "user_encoder", "retrieval", "filter", "rerank", "recommend")


def split_rows(tensors: dict[str, np.ndarray], batched: bool) -> list[dict[str, np.ndarray]]:
    """One request's tensors -> its rows. Unbatched: the request is one row, as it is. Batched: every input has the
    same leading batch size b >= 1 (Triton checks it against the config; a direct call may not) and row i holds
    each tensor's i-th slice."""
    if not batched:
        return [tensors]
    sizes = {name: (arr.shape[0] if arr.ndim else 0) for name, arr in tensors.items()}
    b = next(iter(sizes.values()), 0)
    if b < 1 or any(s != b for s in sizes.values()):
        raise RequestError(f"every input needs the same batch size (the first dimension) >= 1, got {sizes}")
    return [{name: arr[i] for name, arr in tensors.items()} for i in range(b)]


def pad_value(dtype: np.dtype):
    return b"" if dtype == np.object_ else dtype.type(0)


def pad_stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack same-rank arrays along a new first axis, padding every other axis to the largest size."""
    first = arrays[0]
    if all(a.shape == first.shape for a in arrays):
        return np.stack(arrays)
    shape = tuple(max(a.shape[d] for a in arrays) for d in range(first.ndim))
    out = np.full((len(arrays), *shape), pad_value(first.dtype), dtype=first.dtype)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, s) for s in a.shape))] = a
    return out


def stack_rows(rows: list[dict[str, np.ndarray]], names: tuple[str, ...], batched: bool) -> dict[str, np.ndarray]:
    """One request's row outputs -> its response tensors."""
    if not batched:
        return {name: rows[0][name] for name in names}
    return {name: pad_stack([np.asarray(r[name]) for r in rows]) for name in names}


def request_error(results: list, first_row: int, count: int) -> Exception | None:
    """The first failed row of one request, named by its row when the request had several."""
    for i in range(first_row, first_row + count):
        err = results[i]
        if isinstance(err, Exception):
            if count == 1:
                return err
            return RequestError(f"row {i - first_row}: {err}") if isinstance(err, RequestError) else err
    return None


def set_max_batch_size(model_repository: Path, max_batch_size: int) -> None:
    """Rewrite an exported repository's configs for another batch size; 0 turns batching off (one request is one
    user, tensors without the batch dimension: the contract before dynamic batching). Every model changes
    together, because an ensemble's max_batch_size must not exceed its steps'."""
    from tapestry.artifacts import atomic_write_text
    from tapestry.serving.tenant_repository import read_config

    from google.protobuf import text_format

    if not 0 <= int(max_batch_size) <= 4096:
        raise ValueError(f"max_batch_size must be between 0 and 4096, not {max_batch_size}")
    for model in MODELS:
        path = Path(model_repository) / model / "config.pbtxt"
        config = read_config(path)
        config.max_batch_size = int(max_batch_size)
        if config.platform != "ensemble":
            if max_batch_size:
                config.dynamic_batching.SetInParent()
            else:
                config.ClearField("dynamic_batching")
            for inp in config.input:
                # Rows of one batch differ in length (histories, exclude lists): the python backend gets each
                # request's own tensors, so ragged requests can share an execute.
                inp.allow_ragged_batch = bool(max_batch_size)
        atomic_write_text(path, f"# {model}: max_batch_size {max_batch_size} (tapestry.serving.batching; the "
                          "commented template is triton_models/)\n" + text_format.MessageToString(config))
