"""`tapestry datasets fetch` against a local HTTP server started here (never the internet): download, pinned
checksum, resume after a failure, corrupt archive, member checks, and the demo's fetch of the full ML-1M."""
import dataclasses
import hashlib
import io
import random
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tapestry import cli, config
from tapestry.etl import datasets
from tapestry.etl.datasets import Dataset, Source, find, locate
from tapestry.etl.fetch import ChecksumMismatch, FetchError, fetch, git_blob_sha1


class Server:
    """Serves `files` (path -> bytes) with Range support; `truncate` paths send half their body once, then drop."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                state.requests.append((self.path, rng))
                body = state.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not state.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if self.path in state.truncate:      # the connection drops half-way (HTTP/1.0: it closes after)
                    state.truncate.discard(self.path)
                    self.wfile.write(part[: len(part) // 2])
                    return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


FILES = {"ratings.dat": random.Random(0).randbytes(200_000), "items.dat": b"1::a\n2::b\n"}


def toy(server, files=FILES, top="toy/", name="toy", archive=None, members=None) -> Dataset:
    """A data set served by the local server: a zip of `files` under `top` (pinned), each file pinned as well."""
    data = archive if archive is not None else make_zip({top + n: b for n, b in files.items()})
    server.files[f"/{name}.zip"] = data
    return Dataset(name=name, folder=name, title="a toy data set", source="the test's HTTP server", size="tiny",
                   terms="TOY TERMS: for tests only", terms_url="https://example.invalid/terms", files=tuple(files),
                   downloads=(Source(f"{name}.zip", (server.url(f"/{name}.zip"),), sha(data), archive=True),),
                   members=members if members is not None else {n: f"sha256:{sha(b)}" for n, b in files.items()})


def nothing_installed(root: Path, folder="toy"):
    return not (root / folder).exists() and not list(root.glob(f".{folder}.staging-*"))


def test_download_verify_unpack_install(server, tmp_path, capsys):
    ds = toy(server)
    folder = fetch(ds, to=tmp_path)
    assert folder == tmp_path / "toy"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES      # the zip's top folder is stripped
    assert not (tmp_path / ".downloads").exists() and not list(tmp_path.glob(".toy.staging-*"))
    out = capsys.readouterr().out
    assert out.index("TOY TERMS") < out.index("downloading")                 # the terms come before the download
    assert find(ds, roots=[tmp_path]) == folder
    n = len(server.requests)
    assert fetch(ds, to=tmp_path) == folder and len(server.requests) == n    # present: nothing downloaded again
    assert "already present" in capsys.readouterr().out


def test_checksum_mismatch_names_both_digests_and_installs_nothing(server, tmp_path):
    ds = toy(server)
    pinned = ds.downloads[0].sha256
    server.files["/toy.zip"] = make_zip({"toy/ratings.dat": b"something else", "toy/items.dat": b""})
    with pytest.raises(ChecksumMismatch) as e:
        fetch(ds, to=tmp_path)
    actual = sha(server.files["/toy.zip"])
    assert pinned in str(e.value) and actual in str(e.value) and "/toy.zip" in str(e.value)
    assert (e.value.expected, e.value.actual) == (pinned, actual)
    assert nothing_installed(tmp_path) and not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("toy.zip"))


def test_resume_after_a_failed_download(server, tmp_path):
    ds = toy(server)
    server.truncate.add("/toy.zip")
    with pytest.raises(FetchError, match="run the same command again"):
        fetch(ds, to=tmp_path)
    part = tmp_path / ".downloads" / "toy" / "toy.zip.part"
    size = len(server.files["/toy.zip"])
    assert 0 < part.stat().st_size < size and nothing_installed(tmp_path)
    kept = part.stat().st_size
    folder = fetch(ds, to=tmp_path)
    assert server.requests[-1] == ("/toy.zip", f"bytes={kept}-")             # only the rest was asked for
    assert (folder / "ratings.dat").read_bytes() == FILES["ratings.dat"]
    assert not (tmp_path / ".downloads").exists()


def test_a_server_that_ignores_range_sends_it_whole_again(server, tmp_path):
    ds = toy(server)
    server.truncate.add("/toy.zip")
    with pytest.raises(FetchError):
        fetch(ds, to=tmp_path)
    server.ignore_range = True
    assert (fetch(ds, to=tmp_path) / "items.dat").read_bytes() == FILES["items.dat"]


def test_a_corrupt_archive_installs_nothing(server, tmp_path):
    good = make_zip({"toy/ratings.dat": FILES["ratings.dat"], "toy/items.dat": FILES["items.dat"]})
    i = good.index(FILES["ratings.dat"][:64])                                 # stored as is: random bytes
    broken = good[:i + 1000] + bytes([good[i + 1000] ^ 0xFF]) + good[i + 1001:]   # a bad CRC inside the zip
    for archive in (broken, b"not a zip at all"):
        ds = toy(server, archive=archive)                                     # pinned: the digest matches
        with pytest.raises(FetchError, match="corrupt archive"):
            fetch(ds, to=tmp_path)
        assert nothing_installed(tmp_path) and not list(tmp_path.rglob("toy.zip"))


def test_an_unpacked_file_must_match_its_own_pin(server, tmp_path):
    ds = toy(server, members={"ratings.dat": f"sha256:{sha(b'other')}", "items.dat": "git-blob:" + "0" * 40})
    with pytest.raises(ChecksumMismatch, match=f"toy/ratings.dat.*expected {sha(b'other')}, got "
                                               f"{sha(FILES['ratings.dat'])}"):
        fetch(ds, to=tmp_path)
    assert nothing_installed(tmp_path)
    ds = toy(server, files={"ratings.dat": b"x"}, members={})
    ds = dataclasses.replace(ds, files=("ratings.dat", "users.dat"))
    with pytest.raises(FetchError, match="lacks users.dat"):
        fetch(ds, to=tmp_path)


def test_an_archive_path_outside_the_folder_is_refused(server, tmp_path):
    ds = toy(server, archive=make_zip({"../evil.dat": b"x", "ratings.dat": b"y"}), members={})
    with pytest.raises(FetchError, match="unsafe path"):
        fetch(ds, to=tmp_path / "root")
    assert not (tmp_path / "evil.dat").exists()


def test_raw_files_a_mirror_and_a_shared_folder(server, tmp_path):
    """Plain files (Gowalla, S3-Rec): the official URL fails, the mirror gives the pinned bytes; installing into a
    folder that already holds another data set's files (s3rec-sequential) keeps them."""
    data = {"Beauty.txt": b"1 1 2 3\n", "Beauty_item2attributes.json": b'{"1": [1]}'}
    for name, body in data.items():
        server.files[f"/mirror/{name}"] = body
    ds = Dataset(name="beauty", folder="s3rec-sequential", title="t", source="s", size="s", terms="T",
                 terms_url="https://example.invalid", files=tuple(data),
                 downloads=tuple(Source(n, (server.url(f"/gone/{n}"), server.url(f"/mirror/{n}")), sha(b))
                                 for n, b in data.items()))
    (tmp_path / "s3rec-sequential").mkdir()
    (tmp_path / "s3rec-sequential" / "Yelp.txt").write_text("kept")
    folder = fetch(ds, to=tmp_path)
    assert {p.name for p in folder.iterdir()} == {"Yelp.txt", *data}
    assert (folder / "Beauty.txt").read_bytes() == data["Beauty.txt"]
    assert ("/gone/Beauty.txt", None) in server.requests


def test_git_blob_digest_is_gits():
    path = Path(__file__)
    try:
        expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                                  check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not available")
    assert git_blob_sha1(path) == expected


def test_cli_fetch_refuses_what_has_no_pinned_download(capsys):
    with pytest.raises(SystemExit, match="no direct public download.*codalab"):
        cli.main(["datasets", "fetch", "diginetica"])


# --- the registry's ML-1M, served locally: fetch into the cache, then the full ratings.dat is read --------------

ML1M = {"ratings.dat": b"1::1193::5::978300760\n2::1193::3::978302109\n",
        "movies.dat": b"1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n",
        "users.dat": b"1::F::1::10::48067\n2::M::56::16::70072\n", "README": b"toy"}


@pytest.fixture
def ml1m(server, tmp_path, monkeypatch):
    """The registry's ml-1m entry pointed at the local server (pins recomputed for the toy files); a shared root
    holding only the partial copy; an empty cache."""
    import lzma

    archive = make_zip({f"ml-1m/{n}": b for n, b in ML1M.items()})
    server.files["/ml-1m.zip"] = archive
    real = datasets.DATASETS["ml-1m"]
    blob = hashlib.sha1(b"blob %d\0" % len(ML1M["ratings.dat"]) + ML1M["ratings.dat"]).hexdigest()
    entry = dataclasses.replace(
        real, downloads=(dataclasses.replace(real.downloads[0], urls=(server.url("/ml-1m.zip"),),
                                             sha256=sha(archive)),),
        members={"users.dat": f"sha256:{sha(ML1M['users.dat'])}", "ratings.dat": f"git-blob:{blob}"})
    monkeypatch.setitem(datasets.DATASETS, "ml-1m", entry)
    shared, cache = tmp_path / "shared", tmp_path / "cache"
    (shared / "ml-1m" / "partial").mkdir(parents=True)
    for n in ("movies.dat", "users.dat"):
        (shared / "ml-1m" / n).write_bytes(ML1M[n])
    with lzma.open(shared / "ml-1m" / "partial" / "ratings.users-0001-2999.dat.xz", "wb") as f:
        f.write(ML1M["ratings.dat"].splitlines(keepends=True)[0])
    monkeypatch.delenv("TAPESTRY_DATASETS", raising=False)
    monkeypatch.delenv("TAPESTRY_ML1M_RATINGS", raising=False)
    monkeypatch.setattr(config, "shared_datasets_dir", lambda: shared)
    monkeypatch.setenv("TAPESTRY_DATASETS_CACHE", str(cache))
    return {"shared": shared / "ml-1m", "cache": cache / "ml-1m"}


def test_demo_fetches_the_full_ml1m_and_reads_all_of_it(ml1m, capsys):
    from tapestry.demo import demo_data
    from tapestry.etl.movielens import movielens_1m

    assert locate("ml-1m") == ml1m["shared"]                              # only the partial copy so far
    folder = demo_data("ml-1m")
    assert folder == ml1m["cache"] and locate("ml-1m") == ml1m["cache"]   # fetched into the cache, found first
    assert "terms of use: research use only" in capsys.readouterr().out
    raw = movielens_1m(folder, cli.ml1m_ratings_default(folder))
    assert raw.sources["events"] == str(ml1m["cache"] / "ratings.dat")
    assert raw.sources["ratings"].startswith("full ratings.dat") and raw.events.collect().height == 2


def test_demo_falls_back_to_the_partial_copy_when_the_fetch_fails(ml1m, server, capsys, monkeypatch):
    from tapestry.demo import demo_data

    del server.files["/ml-1m.zip"]
    assert demo_data("ml-1m") == ml1m["shared"]
    assert "continuing on the PARTIAL copy" in capsys.readouterr().out
    assert demo_data("ml-1m", fetch=False) == ml1m["shared"]
    monkeypatch.setattr(config, "shared_datasets_dir", lambda: ml1m["shared"].parent.parent / "nowhere")
    with pytest.raises(FetchError, match="404"):
        demo_data("ml-1m")


def test_cli_fetch_to_a_directory(ml1m, tmp_path, capsys):
    cli.main(["datasets", "fetch", "ml-1m", "--to", str(tmp_path / "mine")])
    out = capsys.readouterr().out
    assert f"installed at {tmp_path / 'mine' / 'ml-1m'}" in out and "set TAPESTRY_DATASETS=" in out
    assert (tmp_path / "mine" / "ml-1m" / "ratings.dat").read_bytes() == ML1M["ratings.dat"]
