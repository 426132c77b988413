"""`tapestry datasets fetch`: download a registered data set, verify its pinned digests, unpack it, install it.

Nothing unverified ever lands in a data set's folder:
- a download is written to `<root>/.downloads/<name>/<file>.part`; a failed one stays there and the next fetch resumes
  it (an HTTP Range request; a server that ignores Range sends it whole again);
- a complete download is checked against its pinned sha256 before it is renamed to `<file>`; a mismatch deletes it
  and is an error naming the URL, the expected and the actual digest (the next URL, a mirror, is tried first);
- archives are unpacked into a staging folder beside the target, the unpacked files are checked against the
  registry's per-file digests, and only then is the staging folder renamed into place (or, when the folder already
  exists, e.g. s3rec-sequential with another data set in it, each verified file is renamed into it). A corrupt
  archive or a failed check leaves the target as it was.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from tapestry import config
from tapestry.etl.datasets import Dataset, Source, find, get, has_files

CHUNK = 1 << 16
TIMEOUT_S = 60
USER_AGENT = "tapestry-datasets/0.1 (+https://grouplens.org/datasets/)"


class FetchError(ValueError):
    """A fetch that could not complete; nothing unverified was installed."""


class ChecksumMismatch(FetchError):
    def __init__(self, what: str, expected: str, actual: str):
        self.what, self.expected, self.actual = what, expected, actual
        super().__init__(f"checksum mismatch for {what}: expected {expected}, got {actual}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """`git hash-object FILE`: sha1 of `blob <size>\\0` + the bytes (how ../shared identifies ML-1M's ratings.dat)."""
    h = hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path, kind: str) -> str:
    if kind == "sha256":
        return sha256_file(path)
    if kind == "git-blob":
        return git_blob_sha1(path)
    raise ValueError(f"unknown digest kind {kind!r}")


def _progress(total: int | None, initial: int, desc: str):
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in a log file or a captured test run.
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=None, file=sys.stderr, leave=False)


def download(url: str, part: Path, timeout: float = TIMEOUT_S) -> None:
    """Write `url` to `part`, resuming after the bytes already there. Raises on any network error or short body;
    `part` keeps what arrived, for the next call to resume."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:   # nothing left to send: the earlier attempt got it all; the digest decides
            return
        raise
    with response:
        if offset and (response.status != 206
                       or not (response.headers.get("Content-Range") or "").startswith(f"bytes {offset}-")):
            offset = 0                 # the server ignored Range (or answered another one): start again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as f, _progress(total, offset, part.name[:-5]) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def fetch_source(src: Source, workdir: Path, say: Callable[[str], None] = print) -> Path:
    """`workdir/<src.name>`, downloaded (or resumed) and verified against src.sha256; tries each URL in turn."""
    final, part = workdir / src.name, workdir / f"{src.name}.part"
    if final.exists():
        if sha256_file(final) == src.sha256:
            return final               # verified by an earlier, interrupted fetch
        final.unlink()
    failures, mismatches = [], []
    for url in src.urls:
        resume = part.stat().st_size if part.exists() else 0
        say(f"[datasets] downloading {url}" + (f" (resuming after {resume:,} bytes)" if resume else "")
            + (f", {src.size:,} bytes" if src.size else ""))
        try:
            download(url, part)
        except urllib.error.HTTPError as e:
            failures.append(f"{url}: HTTP {e.code} {e.reason}")
            continue
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            failures.append(f"{url}: {type(e).__name__}: {getattr(e, 'reason', None) or e}")
            continue
        actual = sha256_file(part)
        if actual != src.sha256:
            part.unlink()              # never resume from bytes that do not add up
            mismatches.append(ChecksumMismatch(url, src.sha256, actual))
            continue
        os.replace(part, final)
        return final
    lines = [str(m) for m in mismatches] + failures
    if len(lines) == 1 and mismatches:
        raise mismatches[0]
    if mismatches:
        raise FetchError(f"{src.name}: no URL gave the pinned bytes:\n  " + "\n  ".join(lines))
    kept = part.stat().st_size if part.exists() else 0
    raise FetchError(f"could not download {src.name}:\n  " + "\n  ".join(lines) + "\nrun the same command again"
                     + (f": the download resumes after the {kept:,} bytes kept in {part}" if kept else ""))


def unpack_zip(path: Path, dest: Path) -> list[Path]:
    """Unpack a zip into `dest`, dropping a single top folder (ml-1m/...) and macOS metadata. A member path that
    would leave `dest`, or any corrupt member (bad CRC, truncated data), is an error."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = [i for i in z.infolist() if not i.is_dir()
                     and not PurePosixPath(i.filename).parts[0] == "__MACOSX"]
            names = [PurePosixPath(i.filename) for i in infos]
            for n in names:
                if n.is_absolute() or ".." in n.parts or "\\" in str(n):
                    raise FetchError(f"{path.name}: unsafe path in archive: {str(n)!r}")
            strip = len({n.parts[0] for n in names}) == 1 and all(len(n.parts) > 1 for n in names)
            out = []
            for info, n in zip(infos, names):
                target = dest.joinpath(*(n.parts[1:] if strip else n.parts))
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                out.append(target)
            return out
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise FetchError(f"{path.name}: corrupt archive ({e}); nothing was installed") from e


def verify_members(ds: Dataset, staging: Path) -> None:
    missing = [f for f in ds.files if not (staging / f).is_file()]
    if missing:
        raise FetchError(f"{ds.name}: the download lacks {', '.join(missing)}; nothing was installed")
    for name, pin in ds.members.items():
        kind, expected = pin.split(":", 1)
        path = staging / name
        if not path.is_file():
            raise FetchError(f"{ds.name}: the download lacks {name}; nothing was installed")
        actual = file_digest(path, kind)
        if actual != expected:
            raise ChecksumMismatch(f"{ds.name}/{name} ({kind})", expected, actual)


def _install(staging: Path, folder: Path) -> None:
    if not folder.exists():
        os.rename(staging, folder)     # one atomic step: the folder appears whole
        return
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = folder / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)       # each file atomically; the adapter's files are all verified already


def print_terms(ds: Dataset, say: Callable[[str], None] = print) -> None:
    say(f"[datasets] {ds.name}: {ds.title}\n[datasets] source: {ds.source}\n"
        f"[datasets] terms of use: {ds.terms}\n[datasets] full terms: {ds.terms_url}")


def fetch(ds: Dataset | str, to: Path | None = None, say: Callable[[str], None] = print) -> Path:
    """Download, verify and install data set `ds` under `to` (default: the cache, tapestry.config.datasets_cache_dir)
    and return its folder. Without `to`, a complete copy in any datasets root is used as it is."""
    ds = get(ds) if isinstance(ds, str) else ds
    if not ds.downloads:
        raise FetchError(f"{ds.name}: {ds.instructions}")
    root = Path(to) if to is not None else config.datasets_cache_dir()
    existing = find(ds, roots=[root] if to is not None else None)
    if existing is not None:
        say(f"[datasets] {ds.name} is already present at {existing}; nothing to download")
        return existing
    print_terms(ds, say)
    workdir = root / ".downloads" / ds.name
    workdir.mkdir(parents=True, exist_ok=True)
    downloads = [fetch_source(src, workdir, say) for src in ds.downloads]
    staging = Path(tempfile.mkdtemp(prefix=f".{ds.folder}.staging-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would become the data set folder's mode
    try:
        for src, path in zip(ds.downloads, downloads):
            if src.archive:
                try:
                    unpack_zip(path, staging)
                except FetchError:
                    path.unlink(missing_ok=True)   # a corrupt archive is not kept for a resume
                    raise
            else:
                shutil.copyfile(path, staging / src.name)
        verify_members(ds, staging)
        folder = root / ds.folder
        _install(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        workdir.parent.rmdir()         # .downloads/, when no other data set has a download pending
    except OSError:
        pass
    if not has_files(folder, ds.files):   # cannot happen after the checks above; never claim a data set we lack
        raise FetchError(f"{ds.name}: installed, but {folder} lacks some of {', '.join(ds.files)}")
    say(f"[datasets] {ds.name}: verified and installed at {folder}")
    return folder
