"""The data set registry and where a named data set is read from (explicit, $TAPESTRY_DATASETS, ../shared, cache)."""
import argparse
import json
import lzma
import re

import pytest

from tapestry import cli, config
from tapestry.etl.datasets import DATASETS, DatasetNotFound, find, get, is_partial, locate

ML1M_FILES = {"movies.dat": "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n",
              "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n"}
FULL = "1::1193::5::978300760\n2::1193::3::978302109\n"
PARTIAL = "1::1193::5::978300760\n"


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Three empty roots standing in for $TAPESTRY_DATASETS, ../shared/datasets and the cache (env unset)."""
    r = {k: tmp_path / k for k in ("env", "shared", "cache")}
    monkeypatch.delenv("TAPESTRY_DATASETS", raising=False)
    monkeypatch.delenv("TAPESTRY_ML1M_RATINGS", raising=False)
    monkeypatch.setenv("TAPESTRY_DATASETS_CACHE", str(r["cache"]))
    monkeypatch.setattr(config, "shared_datasets_dir", lambda: r["shared"])
    return r


def put(folder, files: dict, xz: tuple = ()):
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name in xz:
            with lzma.open(f"{path}.xz", "wt", encoding="latin-1") as f:
                f.write(text)
        else:
            path.write_text(text, encoding="latin-1")


def ml100k(folder):
    put(folder, {"u.data": "1\t1\t5\t874965758\n", "u.item": "1|Toy Story (1995)|01-Jan-1995||u|" + "0|" * 18 + "1\n",
                 "u.user": "1|24|M|technician|85711\n"})


def test_registry_covers_every_adapter_and_pins_every_download():
    from tapestry.etl.diginetica import SAMPLE_DIR, SAMPLE_FILE
    from tapestry.etl.s3rec import S3REC_DATASETS

    assert set(cli.ETL_DATASETS) <= set(DATASETS)
    for name, stem in S3REC_DATASETS.items():
        assert DATASETS[name].folder == "s3rec-sequential" and f"{stem}.txt" in DATASETS[name].files
    assert DATASETS["gowalla"].folder == "gowalla-lightgcn" and DATASETS["diginetica-sample"].folder == SAMPLE_DIR
    assert DATASETS["diginetica-sample"].files == (SAMPLE_FILE,)
    for ds in DATASETS.values():
        assert ds.terms and ds.terms_url.startswith("https://") and "\n" not in ds.terms
        assert bool(ds.downloads) != bool(ds.instructions), ds.name   # fetchable, or says how to get it by hand
        for src in ds.downloads:
            assert re.fullmatch(r"[0-9a-f]{64}", src.sha256), src
            assert src.urls and all(u.startswith("https://") for u in src.urls)
        for name, pin in ds.members.items():
            kind, digest = pin.split(":")
            assert (kind, len(digest)) in {("sha256", 64), ("git-blob", 40)}, (ds.name, name)
        if any(s.archive for s in ds.downloads):
            assert ds.members, f"{ds.name}: an archive's files are cross-checked against ../shared's digests"
    assert DATASETS["ml-1m"].downloads[0].urls == ("https://files.grouplens.org/datasets/movielens/ml-1m.zip",)
    assert not DATASETS["diginetica"].downloads


def test_resolution_order_explicit_env_shared_cache(roots, monkeypatch, tmp_path):
    for r in ("shared", "cache"):
        ml100k(roots[r] / "ml-100k")
    assert locate("ml-100k") == roots["shared"] / "ml-100k"                 # shared before the cache
    monkeypatch.setenv("TAPESTRY_DATASETS", str(roots["env"]))
    assert locate("ml-100k") == roots["shared"] / "ml-100k"                 # an env root without it is skipped
    ml100k(roots["env"] / "ml-100k")
    assert locate("ml-100k") == roots["env"] / "ml-100k"                    # $TAPESTRY_DATASETS first
    assert locate("ml-100k", explicit=tmp_path / "mine") == tmp_path / "mine"   # an explicit path, as given
    assert config.dataset_roots() == [roots["env"], roots["shared"], roots["cache"]]


def test_only_a_complete_folder_counts_and_xz_copies_do(roots):
    put(roots["shared"] / "gowalla-lightgcn", {"train.txt": "0 1 2\n"})     # test.txt missing: not the data set
    put(roots["cache"] / "gowalla-lightgcn", {"train.txt": "0 1 2\n", "test.txt": "0 3\n"}, xz=("train.txt",))
    assert locate("gowalla") == roots["cache"] / "gowalla-lightgcn"


def test_missing_data_set_error_names_the_fetch_command(roots):
    with pytest.raises(DatasetNotFound, match=r"tapestry datasets fetch beauty") as e:
        locate("beauty")
    assert isinstance(e.value, FileNotFoundError)
    assert str(roots["shared"]) in str(e.value) and str(roots["cache"]) in str(e.value)
    with pytest.raises(DatasetNotFound, match="codalab"):    # no pinned download: how to get it by hand
        locate("diginetica")
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        get("nope")


def test_full_ml1m_anywhere_beats_the_partial_copy(roots):
    put(roots["shared"] / "ml-1m", {**ML1M_FILES, "partial/ratings.users-0001-2999.dat": PARTIAL},
        xz=("partial/ratings.users-0001-2999.dat",))
    shared = roots["shared"] / "ml-1m"
    assert find("ml-1m") is None and locate("ml-1m") == shared and is_partial("ml-1m", shared)
    with pytest.raises(DatasetNotFound):
        locate("ml-1m", partial=False)
    assert cli.ml1m_ratings_default(shared) == shared / "partial" / "ratings.users-0001-2999.dat.xz"
    put(roots["cache"] / "ml-1m", {**ML1M_FILES, "ratings.dat": FULL})    # e.g. fetched
    cache = roots["cache"] / "ml-1m"
    assert locate("ml-1m") == cache and not is_partial("ml-1m", cache)
    assert cli.ml1m_ratings_default(cache) == cache / "ratings.dat"


def test_etl_reads_the_located_folder_and_says_which_ratings(roots):
    put(roots["shared"] / "ml-1m", {**ML1M_FILES, "partial/ratings.users-0001-2999.dat": PARTIAL})
    ns = argparse.Namespace(events=None, dataset="ml-1m", data_dir=None, ratings=None)
    raw = cli.load_tables(ns)
    assert raw.sources["events"].endswith("partial/ratings.users-0001-2999.dat")
    assert raw.sources["ratings"].startswith("PARTIAL") and "tapestry datasets fetch ml-1m" in raw.sources["ratings"]
    put(roots["cache"] / "ml-1m", {**ML1M_FILES, "ratings.dat": FULL})
    raw = cli.load_tables(ns)
    assert raw.sources["events"] == str(roots["cache"] / "ml-1m" / "ratings.dat")
    assert "6,040 users" in raw.sources["ratings"] and raw.events.collect().height == 2
    with pytest.raises(DatasetNotFound, match="tapestry datasets fetch gowalla"):
        cli.load_tables(argparse.Namespace(events=None, dataset="gowalla", data_dir=None, ratings=None))


def test_diginetica_sample_is_found_in_the_cache(roots):
    from tapestry.etl.diginetica import sample_path

    assert sample_path() == roots["shared"] / "diginetica-srgnn-sample" / "sample_train-item-views.csv"
    put(roots["cache"] / "diginetica-srgnn-sample", {"sample_train-item-views.csv": "session_id;user_id\n"})
    assert sample_path() == roots["cache"] / "diginetica-srgnn-sample" / "sample_train-item-views.csv"


def test_cli_list_says_what_is_where(roots, capsys):
    ml100k(roots["cache"] / "ml-100k")
    put(roots["shared"] / "ml-1m", {**ML1M_FILES, "partial/ratings.users-0001-2999.dat": PARTIAL})
    cli.main(["datasets", "list"])
    out = capsys.readouterr().out
    block = {b.split()[0]: b for b in out.split("\n\n")[1:]}
    assert set(block) == set(DATASETS)
    assert f"present at {roots['cache'] / 'ml-100k'}" in block["ml-100k"]
    assert "files.grouplens.org/datasets/movielens/ml-100k.zip" in block["ml-100k"]
    assert "terms:  research use only" in block["ml-100k"]
    assert "PARTIAL copy at" in block["ml-1m"] and "tapestry datasets fetch ml-1m" in block["ml-1m"]
    assert "not present: `tapestry datasets fetch beauty`" in block["beauty"]
    assert "no pinned download" in block["diginetica"]
    cli.main(["datasets", "list", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ml-100k"]["present"] and rows["ml-100k"]["path"] == str(roots["cache"] / "ml-100k")
    assert rows["ml-1m"]["partial"] and not rows["gowalla"]["present"] and not rows["diginetica"]["fetchable"]

