"""Append-only JSON-lines files (tombstones, the ingest quarantine) that a killed process cannot corrupt.

A batch of records is ONE write(2) on an O_APPEND descriptor, then fsync: a local file gets the whole batch or
none of it. A reader still ignores a trailing line with no newline (a disk that filled up mid-write), and
`append_jsonl` cuts such a tail off before appending, so the next record never glues onto a broken one. Appends
and `rewrite_jsonl` (erasure removing a user's lines) hold an exclusive lock on `<file>.lock`, so a rewrite never
loses a concurrent append.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tapestry.artifacts import atomic_write_bytes


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)      # releases the lock


def _drop_partial_tail(fd: int) -> None:
    size = os.fstat(fd).st_size
    if size == 0:
        return
    # Find the last newline; anything after it is a record that was never completed.
    pos, tail = size, b""
    while pos > 0 and b"\n" not in tail:
        step = min(4096, pos)
        pos -= step
        tail = os.pread(fd, step, pos) + tail
    cut = tail.rfind(b"\n")
    keep = pos + cut + 1 if cut >= 0 else 0
    if keep < size:
        os.ftruncate(fd, keep)


def append_jsonl(path: Path, records: Iterable[dict]) -> int:
    """Append records (one JSON object per line) durably; returns how many were written."""
    data = b"".join(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
    if not data:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _drop_partial_tail(fd)
            view = memoryview(data)
            while view:                  # a regular file takes it in one call; loop only for the rare short write
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    return data.count(b"\n")


def rewrite_jsonl(path: Path, drop: Callable[[dict], bool]) -> int:
    """Remove the records for which `drop` is true (atomically: a temp file renamed over it); returns how many."""
    path = Path(path)
    if not path.exists():
        return 0
    with _locked(path):
        records = [r for _, r in read_jsonl(path)]
        kept = [r for r in records if not drop(r)]
        if len(kept) < len(records):
            atomic_write_bytes(path, b"".join(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8")
                                              + b"\n" for r in kept))
    return len(records) - len(kept)


def read_jsonl(path: Path, start: int = 0) -> Iterator[tuple[int, dict]]:
    """(byte offset after the line, record) for every complete line from byte `start`; a missing file is empty."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(start)
        pos = start
        for line in f:
            if not line.endswith(b"\n"):
                return                    # an unfinished last record: not there yet
            pos += len(line)
            try:
                yield pos, json.loads(line)
            except ValueError:            # a corrupt line (written by hand?): skipped, never fatal
                continue
