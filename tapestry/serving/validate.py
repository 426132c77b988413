"""Checks every serving stage runs on its request tensors before using them.

Triton checks an input's datatype, rank and element count against the called model's config.pbtxt, but not what
the values mean: whether the tenant is this repository's, an item index is in range, a vector has the FAISS
index's dimension, a string is UTF-8. And Triton cannot hide a model: every stage (`retrieval`, `filter`, ...) is
callable directly over HTTP and gRPC, not only through the `recommend` ensemble. So each stage checks its own
tenant and inputs here; a failed check raises RequestError, which the adapter answers with INVALID_ARG (HTTP 400,
gRPC INVALID_ARGUMENT). Anything a stage raises after these checks is a bug in the stage (HTTP 500).

Every function takes the request's tensor dict and returns the input as a 1-D array of the expected kind.
"""
from __future__ import annotations

import unicodedata

import numpy as np

from tapestry.config import _TENANT_RE
from tapestry.serving.stage import RequestError

MAX_ID_CHARS = 256        # a user or item id longer than this is not an id (= the ETL's schema.MAX_ID_LENGTH)
MAX_EXCLUDE_IDS = 1_000   # an exclude list is "items already shown/bought"; more is a misuse, not a request
MAX_RECENT_IDS = 1_000    # events since the last export; the encoder reads only the newest max_len of them
MAX_INTERESTS = 64        # rows of a USER_EMB (interest vectors per user)
MAX_SHOWN_CHARS = 48      # how much of a rejected value an error message repeats

_BAD_ID_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}  # control, format (zero-width, bidi), line/paragraph separators
_KINDS = {"bytes": "BYTES", "int": "an integer type", "float": "a float type"}


def shown(value) -> str:
    """A rejected value as an error message repeats it: escaped (look-alike letters and control characters become
    visible as \\uXXXX / \\xNN), and cut, so an error is never itself huge or misleading."""
    if isinstance(value, (bytes, bytearray)):
        text = ascii(bytes(value[: MAX_SHOWN_CHARS * 4]))
        size = len(value)
    else:
        text, size = ascii(str(value)), len(str(value))
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS] + f"... ({size} characters)"
    return text


def _is_kind(arr: np.ndarray, kind: str) -> bool:
    if kind == "bytes":
        return arr.dtype == np.object_ or arr.dtype.kind in "SU"
    if kind == "int":
        return np.issubdtype(arr.dtype, np.integer)
    return np.issubdtype(arr.dtype, np.floating)


def tensor(t: dict, name: str, kind: str, *, min_size: int = 1, max_size: int | None = None) -> np.ndarray:
    """The input `name`: present, 1-D (the rank every config.pbtxt declares), of `kind`, with a bounded size."""
    if t.get(name) is None:
        raise RequestError(f"missing input tensor {name}")
    arr = np.asarray(t[name])
    if arr.ndim != 1:
        raise RequestError(f"{name} must be a 1-D tensor, got shape {list(arr.shape)}")
    if not _is_kind(arr, kind):
        raise RequestError(f"{name} must be {_KINDS[kind]}, got {arr.dtype}")
    if arr.size < min_size:
        raise RequestError(f"{name} must have at least {min_size} element(s), got {arr.size}")
    if max_size is not None and arr.size > max_size:
        raise RequestError(f"{name} has {arr.size} elements, at most {max_size} are allowed")
    return arr


def text(value, name: str, *, max_chars: int = MAX_ID_CHARS, allow_empty: bool = False) -> str:
    """One BYTES element as a str: UTF-8, no control/invisible characters, stripped, not empty unless allowed,
    bounded."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"{name} is not valid UTF-8: {shown(value)}") from None
    elif not isinstance(value, str):
        raise RequestError(f"{name} must hold strings, got {type(value).__name__}")
    value = value.strip()
    if not value and not allow_empty:
        raise RequestError(f"{name} is empty")
    if len(value) > max_chars:
        raise RequestError(f"{name} is {len(value)} characters long, at most {max_chars} are allowed: {shown(value)}")
    # The ETL quarantines ids with these (tapestry/etl/schema.py, the id policy), so no stored id has one; and an
    # id with a control character (NUL, an escape sequence) or an invisible one (zero-width, bidi) is how log
    # injection and look-alike ids start. Not imported from the ETL: the stage processes do not load it.
    bad = [c for c in value if unicodedata.category(c) in _BAD_ID_CATEGORIES or c == "\ufffd"]
    if bad:
        raise RequestError(f"{name} contains control or invisible characters: {shown(value)}")
    return value


def single_text(t: dict, name: str, **kw) -> str:
    return text(tensor(t, name, "bytes", max_size=1)[0], name, **kw)


def texts(t: dict, name: str, *, max_size: int, **kw) -> list[str]:
    return [text(v, name, allow_empty=True, **kw) for v in tensor(t, name, "bytes", min_size=0, max_size=max_size)]


def tenant(t: dict, expected: str) -> str:
    """The request's TENANT, which must be exactly the tenant this repository was exported for."""
    arr = tensor(t, "TENANT", "bytes", max_size=1)
    raw = arr[0]
    try:
        name = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)
    except UnicodeDecodeError:
        raise RequestError(f"TENANT is not valid UTF-8: {shown(raw)}") from None
    if name == expected:
        return name
    # Compared exactly (no strip, no case folding): 'ml1m ' or a Cyrillic look-alike is another tenant. A name
    # that is not a valid tenant id at all ('../x', '', 10 kB) gets its own message; neither says which tenant
    # is served (a foreign client learns no tenant names).
    # fullmatch, not the pattern's own ^...$: '$' also matches before a trailing newline.
    if not _TENANT_RE.fullmatch(name):
        raise RequestError(f"TENANT {shown(name)} is not a valid tenant id (1-64 characters from [A-Za-z0-9_-], "
                           "starting with a letter or digit)")
    raise RequestError(f"tenant {shown(name)} is not served by this model repository")


def item_indices(t: dict, name: str, num_items: int, *, min_size: int = 1, max_size: int | None = None) -> np.ndarray:
    """Encoded item indices (0 = padding) of this repository's catalogue: 0 <= i < num_items."""
    arr = tensor(t, name, "int", min_size=min_size, max_size=max_size).astype(np.int64, copy=False)
    bad = arr[(arr < 0) | (arr >= num_items)]
    if bad.size:
        raise RequestError(f"{name} holds {bad.size} item index(es) outside 0..{num_items - 1}, e.g. {int(bad[0])}")
    return arr


def floats(t: dict, name: str, *, size: int | None = None, min_size: int = 1, max_size: int | None = None,
           allow_neg_inf: bool = False) -> np.ndarray:
    """Float32 values, all finite (-inf too when `allow_neg_inf`: the filter's "nothing left" marker)."""
    if size is not None:
        min_size = max_size = size
    arr = tensor(t, name, "float", min_size=min_size, max_size=max_size).astype(np.float32, copy=False)
    ok = np.isfinite(arr) | (np.isneginf(arr) if allow_neg_inf else False)
    if not ok.all():
        raise RequestError(f"{name} holds {int((~ok).sum())} non-finite value(s) (NaN or infinity)")
    return arr


def float_rows(t: dict, name: str, *, cols: int, max_rows: int) -> np.ndarray:
    """A finite float32 matrix [rows, cols] (1 <= rows <= max_rows): e.g. a user's K interest vectors."""
    if t.get(name) is None:
        raise RequestError(f"missing input tensor {name}")
    arr = np.asarray(t[name])
    if arr.ndim != 2 or arr.shape[1] != cols or not 1 <= arr.shape[0] <= max_rows:
        raise RequestError(f"{name} must have shape [1..{max_rows}, {cols}], got {list(arr.shape)}")
    if not _is_kind(arr, "float"):
        raise RequestError(f"{name} must be {_KINDS['float']}, got {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise RequestError(f"{name} holds {int((~np.isfinite(arr)).sum())} non-finite value(s) (NaN or infinity)")
    return arr


def same_size(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.size != b.size:
        raise RequestError(f"{name_a} and {name_b} must have the same length, got {a.size} and {b.size}")


def top_k(t: dict, max_k: int) -> int:
    k = int(tensor(t, "K", "int", max_size=1)[0])
    if not 1 <= k <= max_k:
        raise RequestError(f"K must be between 1 and {max_k}, got {k}")
    return k
