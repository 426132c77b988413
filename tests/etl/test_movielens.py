"""MovieLens adapters on the real files (ML-100K complete; ML-1M users/movies + partial ratings)."""
from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from tapestry.config import ETLConfig, datasets_dir
from tapestry.etl import schema as S
from tapestry.etl.movielens import ML1M_AGE_GROUPS, ML1M_OCCUPATIONS, ML100K_GENRES, _age_bucket, movielens_1m, \
    movielens_100k
from tapestry.etl.pipeline import run_etl
from tapestry.etl.validate import validate_events

ML100K = datasets_dir() / "ml-100k"
ML1M = datasets_dir() / "ml-1m"
ML1M_PARTIAL = ML1M / "partial" / "ratings.users-0001-2999.dat.xz"
QUIET = dict(log=lambda *a, **k: None)

needs_100k = pytest.mark.skipif(not (ML100K / "u.item").exists(), reason="ML-100K not staged")
needs_1m = pytest.mark.skipif(not (ML1M / "movies.dat").exists(), reason="ML-1M not staged")


def _bucket(age: int) -> str:
    for upper, name in ((18, "under-18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if age < upper:
            return name
    return "56+"


# ------------------------------------------------------------------------------------------------ ML-100K

@pytest.fixture(scope="module")
def ml100k():
    if not (ML100K / "u.item").exists():
        pytest.skip("ML-100K not staged")
    return movielens_100k(ML100K)


@needs_100k
def test_ml100k_counts(ml100k):
    ev = ml100k.events.collect()
    assert ev.height == 100_000
    assert ev["user_id"].n_unique() == 943
    assert ev["item_id"].n_unique() == 1682
    assert set(ev["event_type"]) == {"rating"}
    assert set(ev["weight"]) == {"1", "2", "3", "4", "5"}
    assert all(r.height == 0 for r in ml100k.rejected)
    assert ml100k.items.collect().height == 1682
    assert ml100k.users.collect().height == 943


@needs_100k
def test_ml100k_genres_parsed_from_flags(ml100k):
    items = {r["item_id"]: r for r in ml100k.items.collect().iter_rows(named=True)}
    toy = items["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genre"].split("|") == ["Animation", "Children's", "Comedy"]
    star_wars = items["50"]
    assert set(star_wars["genre"].split("|")) == {"Action", "Adventure", "Romance", "Sci-Fi", "War"}
    # Every genre name is a real one, and every item's genres match its raw flags.
    raw = (ML100K / "u.item").read_bytes().decode("latin-1").split("\n")
    for line in raw:
        if not line.strip():
            continue
        f = line.split("|")
        expected = [g for g, flag in zip(ML100K_GENRES, f[5:]) if flag == "1"]
        assert items[f[0]]["genre"] == "|".join(expected)


@needs_100k
def test_ml100k_latin1_titles_decode(ml100k):
    items = {r["item_id"]: r["title"] for r in ml100k.items.collect().iter_rows(named=True)}
    assert items["543"] == "Misérables, Les (1995)"
    assert items["1104"] == "C'est arrivé près de chez vous (1992)"


@needs_100k
def test_ml100k_age_buckets(ml100k):
    users = ml100k.users.collect()
    assert users["age_group"].null_count() == 0
    for age, group in zip(users["age"].to_list(), users["age_group"].to_list()):
        assert group == _bucket(int(age))
    assert set(users["age_group"]) == set(ML1M_AGE_GROUPS.values())
    u1 = users.filter(pl.col("user_id") == "1").row(0, named=True)
    assert (u1["age"], u1["gender"], u1["occupation"], u1["age_group"]) == ("24", "M", "technician", "18-24")


def test_age_bucket_boundaries():
    ages = [1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 90]
    frame = pl.DataFrame({"a": [str(a) for a in ages] + ["x", None]})
    got = frame.select(_age_bucket(pl.col("a")).alias("a"))["a"].to_list()
    assert got == [_bucket(a) for a in ages] + [None, None]


@needs_100k
def test_ml100k_through_etl(tmp_path, ml100k):
    res = run_etl(ml100k, "ml100k", root=tmp_path, **QUIET)
    m = res.manifest
    assert m["counts"]["input_rows"] == m["counts"]["valid_rows"] == 100_000
    assert m["num_users"] == 944 and m["num_items"] == 1683
    item_map = pl.read_parquet(res.path / "item_map.parquet")
    toy_idx = item_map.filter(pl.col("item_id") == "1")["item_idx"].item()
    ent = pl.read_parquet(res.path / "item_entities.parquet")
    toy = ent.filter(pl.col("item_idx") == toy_idx)
    assert sorted(toy["entity_value"]) == ["Animation", "Children's", "Comedy"]
    assert set(toy["entity_type"]) == {"genre"}
    items = pl.read_parquet(res.path / "items.parquet")
    assert items.filter(pl.col("item_id") == "1")["title"].item() == "Toy Story (1995)"


# ------------------------------------------------------------------------------------------------ ML-1M

RATINGS_LINES = [
    "1::1193::5::978300760",        # 0
    "1::661::3::978302109",         # 1
    "1::914::3::978301968",         # 2
    "2::1357",                      # 3  malformed: too few fields
    "2::1357::5::978298709::extra", # 4  malformed: too many fields
    "2::3068::4::978299000",        # 5
    "2::1537::4::978299620",        # 6
    "2::647::3::978299351",         # 7
    "3::::3::978297018",            # 8  right field count, empty item -> missing_item_id
    "3::260::5::978297512",         # 9
    "",                             # 10 trailing blank line: not a record
]


@pytest.fixture
def small_ratings(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("\n".join(RATINGS_LINES), encoding="latin-1")
    return path


@needs_1m
def test_ml1m_small_ratings_malformed_lines_are_quarantined(tmp_path, small_ratings):
    raw = movielens_1m(ML1M, ratings=small_ratings)
    ev_bad = next(r for r in raw.rejected if r.height and r["source"][0] == "events")
    assert ev_bad["source_row"].to_list() == [3, 4]
    assert set(ev_bad["reason"]) == {S.MALFORMED_LINE}
    assert ev_bad["raw_line"].to_list() == [RATINGS_LINES[3], RATINGS_LINES[4]]
    ev = raw.events.collect()
    assert ev["source_row"].to_list() == [0, 1, 2, 5, 6, 7, 8, 9]

    res = run_etl(raw, "ml1m-small", root=tmp_path / "artifacts", **QUIET)
    counts = res.manifest["counts"]
    records = len([ln for ln in RATINGS_LINES if ln])
    assert counts["input_rows"] == records
    assert counts["valid_rows"] == 7
    assert counts["quarantined_rows"] == 3
    assert counts["valid_rows"] + counts["quarantined_rows"] == counts["input_rows"]
    assert counts["by_reason"] == {S.MALFORMED_LINE: 2, S.MISSING_ITEM_ID: 1}
    q = pl.read_parquet(res.path / "quarantine.parquet")
    assert dict(zip(q["source_row"].to_list(), q["reason"].to_list())) == {
        3: S.MALFORMED_LINE, 4: S.MALFORMED_LINE, 8: S.MISSING_ITEM_ID}
    events = pl.read_parquet(res.path / "events.parquet")
    assert events.height == 7
    assert set(events["weight"].to_list()) == {3.0, 4.0, 5.0}


@needs_1m
def test_ml1m_crlf_ratings(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_bytes(b"1::1193::5::978300760\r\n1::661::3::978302109\r\n")
    good, bad = validate_events(movielens_1m(ML1M, ratings=path).events, ETLConfig())
    assert good.collect()["timestamp"].to_list() == [978300760, 978302109]
    assert bad.collect().height == 0


@needs_1m
def test_ml1m_real_users_and_movies(small_ratings):
    raw = movielens_1m(ML1M, ratings=small_ratings)
    assert all(r.height == 0 for r in raw.rejected if r.height and r["source"][0] != "events")
    items = raw.items.collect()
    assert items.height == 3883
    by_id = {r["item_id"]: r for r in items.iter_rows(named=True)}
    assert by_id["260"]["title"] == "Star Wars: Episode IV - A New Hope (1977)"
    assert by_id["260"]["genre"] == "Action|Adventure|Fantasy|Sci-Fi"
    assert by_id["1"]["genre"].split("|") == ["Animation", "Children's", "Comedy"]
    assert by_id["73"]["title"] == "Misérables, Les (1995)"
    assert by_id["570"]["title"] == "Slingshot, The (Kådisbellan ) (1993)"

    users = raw.users.collect()
    assert users.height == 6040
    assert users["age_group"].null_count() == 0 and users["occupation"].null_count() == 0
    assert set(users["age_group"]) == set(ML1M_AGE_GROUPS.values())
    assert set(users["occupation"]) <= set(ML1M_OCCUPATIONS)
    assert set(users["gender"]) == {"F", "M"}
    u1 = users.filter(pl.col("user_id") == "1").row(0, named=True)
    assert (u1["gender"], u1["age_group"], u1["occupation"]) == ("F", "under-18", "K-12 student")
    u2 = users.filter(pl.col("user_id") == "2").row(0, named=True)
    assert (u2["gender"], u2["age_group"], u2["occupation"]) == ("M", "56+", "self-employed")


@needs_1m
def test_ml1m_entities_through_etl(tmp_path, small_ratings):
    res = run_etl(movielens_1m(ML1M, ratings=small_ratings), "ml1m-small", root=tmp_path, **QUIET)
    item_map = pl.read_parquet(res.path / "item_map.parquet")
    sw = item_map.filter(pl.col("item_id") == "260")["item_idx"].item()
    ent = pl.read_parquet(res.path / "item_entities.parquet").filter(pl.col("item_idx") == sw)
    assert sorted(ent["entity_value"]) == ["Action", "Adventure", "Fantasy", "Sci-Fi"]
    items = pl.read_parquet(res.path / "items.parquet")
    assert items.filter(pl.col("item_id") == "260")["title"].item() == "Star Wars: Episode IV - A New Hope (1977)"
    # Only items with events are encoded; the rest of the catalogue is counted, not lost silently.
    assert items.height == item_map.height == 7
    assert res.manifest["catalog_items_without_events"] == 3883 - 7
    user_ent = pl.read_parquet(res.path / "user_entities.parquet")
    user_map = pl.read_parquet(res.path / "user_map.parquet")
    u1 = user_map.filter(pl.col("user_id") == "1")["user_idx"].item()
    got = {(t, v) for t, v in user_ent.filter(pl.col("user_idx") == u1).select("entity_type", "entity_value").rows()}
    assert got == {("gender", "F"), ("age_group", "under-18"), ("occupation", "K-12 student")}


def test_ml1m_separator_bytes_in_latin1_titles_do_not_split_lines(tmp_path):
    """latin-1 byte 0x85 (cp1252 '…') decodes to U+0085, which str.splitlines() would treat as a line break."""
    d = tmp_path / "ml1m"
    d.mkdir()
    (d / "movies.dat").write_bytes(b"1::Wait\x85 What (1999)::Comedy\n2::Caf\xe9 (2000)::Drama|Romance\n"
                                   b"3::Form\x0cfeed::Drama\n")
    (d / "users.dat").write_bytes(b"1::F::25::12::12345\n")
    ratings = d / "ratings.dat"
    ratings.write_bytes(b"1::1::5::978300760\n1::2::4::978300761\n1::3::3::978300762\n")
    raw = movielens_1m(d, ratings=ratings)
    assert all(r.height == 0 for r in raw.rejected)
    titles = raw.items.collect()["title"].to_list()
    assert titles == ["Wait\x85 What (1999)", "Café (2000)", "Form\x0cfeed"]


@needs_1m
def test_ml1m_real_partial_ratings(tmp_path):
    raw = movielens_1m(ML1M, ratings=ML1M_PARTIAL)
    assert all(r.height == 0 for r in raw.rejected)
    ev = raw.events.collect()
    assert ev.height == 487_650
    assert ev.row(0, named=True) == {"source_row": 0, "user_id": "1", "item_id": "1193", "weight": "5",
                                          "timestamp": "978300760", "event_type": "rating"}
    assert ev["user_id"].n_unique() == 2999
    assert ev["item_id"].n_unique() == 3615
    good, bad = validate_events(raw.events, ETLConfig())
    good, bad = good.collect(), bad.collect()
    assert good.height == 487_650 and bad.height == 0
    assert set(good["weight"].unique().to_list()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert raw.sources["events"] == str(ML1M_PARTIAL)


@needs_1m
def test_ml1m_users_file_with_a_bad_line_is_quarantined_as_entity(tmp_path, small_ratings):
    d = tmp_path / "ml1m"
    d.mkdir()
    shutil.copy(ML1M / "movies.dat", d / "movies.dat")
    lines = (ML1M / "users.dat").read_bytes().split(b"\n")
    lines.insert(5, b"9999::M::25")           # malformed
    lines.insert(7, b"::M::25::12::12345")    # missing entity id
    (d / "users.dat").write_bytes(b"\n".join(lines))
    res = run_etl(movielens_1m(d, ratings=small_ratings), "t", root=tmp_path / "a", **QUIET)
    q = pl.read_parquet(res.path / "quarantine.parquet").filter(pl.col("source") == "users")
    assert dict(zip(q["source_row"].to_list(), q["reason"].to_list())) == {5: S.MALFORMED_LINE,
                                                                           7: S.MISSING_ENTITY_ID}
    m = json.loads((res.path / "manifest.json").read_text())
    assert m["counts"]["quarantined_entity_rows"] == 2
    assert m["counts"]["quarantined_rows"] == 3  # events only: unchanged by entity problems


@needs_1m
def test_ml1m_like_at_splits_ratings_into_like_and_view(tmp_path):
    """issue 19: rating >= 4 is a `like`, anything lower a `view`; the rating stays the weight."""
    path = tmp_path / "ratings.dat"
    path.write_bytes(b"1::1193::5::978300760\n1::661::3::978302109\n1::914::4::978301968\n2::1193::1::978300761\n")
    assert movielens_1m(ML1M, ratings=path).events.collect()["event_type"].unique().to_list() == ["rating"]
    good, bad = validate_events(movielens_1m(ML1M, ratings=path, like_at=4).events, ETLConfig())
    good = good.collect()
    assert good["event_type"].to_list() == ["like", "view", "like", "view"]
    assert good["weight"].to_list() == [5.0, 3.0, 4.0, 1.0] and bad.collect().height == 0
