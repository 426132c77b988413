"""The public data sets the adapters know: where each comes from, its pinned digests and terms, and where it is found.

A data set lives in a folder (`Dataset.folder`) under a datasets root. `locate()` looks in this order: an explicit
directory, $TAPESTRY_DATASETS, ../shared/datasets, the fetch cache ($TAPESTRY_DATASETS_CACHE, default
~/.local/share/tapestry/datasets; see tapestry.config.dataset_roots). A folder counts only when it holds every file
the adapter reads (each plain or `.xz`). When no root has it, the error names `tapestry datasets fetch NAME`.

Every download is pinned by the sha256 of its bytes; tapestry.etl.fetch refuses anything else. Where the archive's
digest is pinned, the files inside that ../shared/datasets/*/README.md lists are checked after unpacking as well
(`members`), against those READMEs' digests: two independent sources have to agree. A data set without a public
download that could be pinned (the full DIGINETICA) has `downloads=()` and `instructions`: fetch refuses with them.

Provenance of the archive digests. The READMEs under ../shared/datasets give the digests of the unpacked FILES, not
of the GroupLens zips (no copy of the zips is kept there). The zip digests below are the values that several
independent open-source projects pin for the same URLs (e.g. the Keras-RS SASRec example for ml-1m.zip, alongside
GroupLens's own published md5 c4d9eecfca2ab87c1945afe126590906; for ml-100k.zip md5 0e33842e24a9c977be4e0107933c0723),
and the unpacked files are checked against ../shared's digests, so a wrong archive pin would fail loudly, never
install other data. The raw files (Gowalla, S3-Rec, the DIGINETICA sample) are pinned by ../shared's digests directly:
there the download IS the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tapestry import config


@dataclass(frozen=True)
class Source:
    """One downloaded file: the same bytes at every URL (official first, then mirrors), checked against `sha256`."""
    name: str                      # file name of the download; a plain file is installed under this name
    urls: tuple[str, ...]
    sha256: str
    size: int | None = None        # bytes, when known (shown by `datasets list`; the server's length drives progress)
    archive: bool = False          # a zip: its files are unpacked (a single top folder, e.g. ml-1m/, is stripped)


@dataclass(frozen=True)
class Dataset:
    name: str                      # the CLI name (`tapestry etl --dataset`, `tapestry datasets fetch`)
    folder: str                    # the folder under a datasets root
    title: str
    source: str                    # where it comes from, one line
    size: str                      # what a fetch downloads / occupies, one line
    terms: str                     # terms of use, one line
    terms_url: str
    files: tuple[str, ...]         # what the adapter reads: the folder counts as present when all exist (or .xz)
    downloads: tuple[Source, ...] = ()
    members: dict[str, str] = field(default_factory=dict)   # unpacked file -> "sha256:<hex>" | "git-blob:<hex>"
    partial_files: tuple[str, ...] = ()   # a usable incomplete copy (ML-1M's partial/ in ../shared), else ()
    instructions: str = ""         # how to get it by hand, when there is no pinned download


_GL = "https://files.grouplens.org/datasets"
_MOVIELENS_TERMS = ("research use only; acknowledge it (Harper & Konstan, ACM TiiS 2015); no redistribution and no "
                    "commercial use without GroupLens's permission; no endorsement may be implied")
_LIGHTGCN = "https://raw.githubusercontent.com/kuandeng/LightGCN"
_LIGHTGCN_COMMIT = "b067ec05f16a24e0e1efe63cd82385f0c469af20"
_S3REC_OFFICIAL = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data"
# The first author's repository at the commit ../shared/datasets/s3rec-sequential/README.md verified (same blobs).
_S3REC_MIRROR = ("https://raw.githubusercontent.com/aHuiWang/CIKM2020-S3Rec/"
                 "49a890dcb516c9ed3126564495234ea74d5cd566/data")
_SRGNN = "https://raw.githubusercontent.com/CRIPAC-DIG/SR-GNN"
_SRGNN_COMMIT = "e21cfa431f74c25ae6e4ae9261deefe11d1cb488"


def _lightgcn(name: str, sha256: str, size: int) -> Source:
    path = f"Data/gowalla/{name}"
    return Source(name, (f"{_LIGHTGCN}/{_LIGHTGCN_COMMIT}/{path}", f"{_LIGHTGCN}/master/{path}"), sha256, size)


def _s3rec(name: str, stem: str, title: str, sizes: str, terms: str, digests: tuple[str, str, int, int]) -> Dataset:
    txt, attrs = f"{stem}.txt", f"{stem}_item2attributes.json"
    return Dataset(
        name=name, folder="s3rec-sequential", title=title,
        source="S3-Rec release (RUCAIBox/CIKM2020-S3Rec, data/), raw files", size=sizes, terms=terms,
        terms_url="https://github.com/RUCAIBox/CIKM2020-S3Rec", files=(txt, attrs),
        downloads=tuple(Source(f, (f"{_S3REC_OFFICIAL}/{f}", f"{_S3REC_MIRROR}/{f}"), digest, size)
                        for f, digest, size in ((txt, digests[0], digests[2]), (attrs, digests[1], digests[3]))))


_AMAZON_TERMS = ("research use (Amazon review data, McAuley et al.; no explicit redistribution grant; the S3-Rec repo "
                 "has no licence file); cite S3-Rec and McAuley et al.")

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset(
        name="ml-1m", folder="ml-1m", title="MovieLens 1M: 1,000,209 ratings, 6,040 users x 3,706 movies",
        source=f"GroupLens, {_GL}/movielens/ml-1m.zip", size="zip ~6 MB, ~24 MB unpacked",
        terms=_MOVIELENS_TERMS, terms_url="https://grouplens.org/datasets/movielens/1m/",
        files=("ratings.dat", "movies.dat", "users.dat"),
        partial_files=("partial/ratings.users-0001-2999.dat", "movies.dat", "users.dat"),
        downloads=(Source("ml-1m.zip", (f"{_GL}/movielens/ml-1m.zip",),
                          "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", archive=True),),
        members={   # ../shared/datasets/ml-1m/README.md (ratings.dat: its git blob id, the only digest known for it)
            "users.dat": "sha256:1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
            "movies.dat": "sha256:0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
            "ratings.dat": "git-blob:77a7c4b150f588c23bb9e1f068aa996c0b413695",
        }),
    Dataset(
        name="ml-100k", folder="ml-100k", title="MovieLens 100K: 100,000 ratings, 943 users x 1,682 movies",
        source=f"GroupLens, {_GL}/movielens/ml-100k.zip", size="zip 4.9 MB, ~16 MB unpacked",
        terms=_MOVIELENS_TERMS, terms_url="https://grouplens.org/datasets/movielens/100k/",
        files=("u.data", "u.item", "u.user"),
        downloads=(Source("ml-100k.zip", (f"{_GL}/movielens/ml-100k.zip",),
                          "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", 4_924_029,
                          archive=True),),
        members={   # ../shared/datasets/ml-100k/README.md
            "u.data": "sha256:06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.item": "sha256:553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "u.user": "sha256:f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
        }),
    Dataset(
        name="gowalla", folder="gowalla-lightgcn",
        title="Gowalla, the NGCF/LightGCN split: 29,858 users x 40,981 items, fixed train/test",
        source="LightGCN repository (kuandeng/LightGCN, Data/gowalla/), raw files",
        size="4 files, 6.9 MB", terms_url="https://snap.stanford.edu/data/loc-gowalla.html",
        terms=("no licence file in the LightGCN repository; SNAP loc-gowalla check-ins: cite Cho, Myers & Leskovec "
               "(KDD 2011) and NGCF/LightGCN"),
        files=("train.txt", "test.txt"),
        downloads=(   # digests: ../shared/datasets/gowalla-lightgcn/README.md (byte-identical to the repository)
            _lightgcn("train.txt", "7244696fdeb23911319cf7b689f2e15a3c4c92549c873a5677b44e3f13cc3e62", 4_633_414),
            _lightgcn("test.txt", "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3", 1_372_559),
            _lightgcn("user_list.txt", "5344c4d0deef610e1f148f23ad216a0db03b36f88834cd39a06786a672c5f5a1", 351_203),
            _lightgcn("item_list.txt", "6b186f92890cc3f0c15a6dae5d6285f125a302bb8c5ea0cd9a16cf9c16347139", 506_926),
        )),
    # S3-Rec: digests and sizes from ../shared/datasets/s3rec-sequential/README.md (byte-identical to the release).
    _s3rec("beauty", "Beauty", "Amazon Beauty (S3-Rec): 22,363 users x 12,101 items, leave-one-out", "2 files, 1.4 MB",
           _AMAZON_TERMS, ("226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
                           "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4", 1_090_094, 305_674)),
    _s3rec("sports", "Sports_and_Outdoors", "Amazon Sports_and_Outdoors (S3-Rec): 35,598 users x 18,357 items",
           "2 files, 2.4 MB", _AMAZON_TERMS,
           ("2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
            "7fb10733ac4f1811384a52144cdefa7fcc7536fa80a7232c5da9bd789155c34b", 1_707_483, 653_780)),
    _s3rec("toys", "Toys_and_Games", "Amazon Toys_and_Games (S3-Rec): 19,412 users x 11,924 items",
           "2 files, 1.3 MB", _AMAZON_TERMS,
           ("176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f",
            "d371acd25101eedac04afc727626464b7acec770c4eda708705d51eb76eb1ad0", 922_166, 327_536)),
    _s3rec("yelp", "Yelp", "Yelp 2019 (S3-Rec): 30,431 users x 20,033 businesses", "2 files, 2.4 MB",
           "Yelp Open Dataset terms: academic / non-commercial use only, no redistribution; cite S3-Rec",
           ("724b219106b81dd2349027da997334ddb6da9fe2f152ad6e0d97a93170f7caed",
            "f25acd5e1e680e0b22fd4e3f4fb6be4b2a7461e9222610616e3e1ee6702dd58d", 1_814_224, 600_360)),
    _s3rec("lastfm-s3rec", "LastFM", "Last.fm (S3-Rec, from HetRec 2011): 1,090 users x 3,646 artists",
           "2 files, 0.8 MB", "from HetRec 2011 Last.fm: non-commercial use only; cite S3-Rec and HetRec 2011",
           ("9ded486adb5b0fe9dc761950afa0a9a05e93ff018992e0c52bf11afec529f802",
            "a4ccd678dc9ff6d43fe5073f491db5c9b02eb98dfa4f8c0382913a784be217ef", 239_312, 524_368)),
    Dataset(
        name="hetrec-lastfm", folder="hetrec2011-lastfm-2k",
        title="HetRec 2011 Last.fm 2K: plays, user-tag-artist triples, friend graph (1,892 users)",
        source=f"GroupLens, {_GL}/hetrec2011/hetrec2011-lastfm-2k.zip", size="zip, ~8 MB of .dat files unpacked",
        terms=("non-commercial use only (commercial use: ask Last.fm); cite Last.fm and Cantador, Brusilovsky & "
               "Kuflik (HetRec 2011)"),
        terms_url="https://grouplens.org/datasets/hetrec-2011/",
        files=("user_artists.dat", "artists.dat", "tags.dat", "user_friends.dat", "user_taggedartists.dat"),
        downloads=(Source("hetrec2011-lastfm-2k.zip", (f"{_GL}/hetrec2011/hetrec2011-lastfm-2k.zip",),
                          "6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c", archive=True),),
        members={   # ../shared/datasets/hetrec2011-lastfm-2k/README.md (byte-identical to the GroupLens files)
            "artists.dat": "sha256:c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648",
            "tags.dat": "sha256:e95175f259be4c0c47644ae23d66131cd6d5767142a1405000e79f5584691d70",
            "user_artists.dat": "sha256:001400dc3c7d2667fca6e4ea6dc6acc31a9dd28ad5cd0f74cea988c019934d3b",
            "user_friends.dat": "sha256:9a3a8f7fa5f5ec832335e5b58ed69a4cf27c6f6f6afcde62134810eea46445a7",
            "user_taggedartists.dat": "sha256:d31fe938fcfeed6f0059f37a36b156f63674d073fc2553e5cc9dc1595e365bc7",
        }),
    Dataset(
        name="diginetica-sample", folder="diginetica-srgnn-sample",
        title="DIGINETICA item-view sample shipped with SR-GNN (12,390 views; the session benchmark's default)",
        source="SR-GNN repository (CRIPAC-DIG/SR-GNN, datasets/), raw file", size="1 file, 0.4 MB",
        terms="no licence found (SR-GNN repo has none; CIKM Cup 2016 terms unavailable); cite SR-GNN and CIKM Cup 2016",
        terms_url="https://github.com/CRIPAC-DIG/SR-GNN",
        files=("sample_train-item-views.csv",),
        downloads=(Source("sample_train-item-views.csv",
                          tuple(f"{_SRGNN}/{ref}/datasets/sample_train-item-views.csv"
                                for ref in (_SRGNN_COMMIT, "master")),
                          "98da96e05c87ef12b739e4bfd9bc7b4864106ee77371f1db9eb4413e3f78d37e", 395_354),)),
    Dataset(
        name="diginetica", folder="diginetica",
        title="DIGINETICA (CIKM Cup 2016) full train-item-views.csv",
        source="CIKM Cup 2016 (CodaLab competition 11161); no direct public download",
        size="not downloadable by tapestry", terms_url="https://competitions.codalab.org/competitions/11161",
        terms="the CIKM Cup 2016 competition terms (read them on the competition page before downloading)",
        files=("train-item-views.csv",),
        instructions=("the full DIGINETICA has no direct public download that could be pinned: sign in to the CIKM "
                      "Cup 2016 competition (https://competitions.codalab.org/competitions/11161, linked from the "
                      "SR-GNN README), download dataset-train-diginetica.zip, and put its train-item-views.csv in "
                      "<datasets root>/diginetica/ (or pass the file to benchmarks/session.py --data). The SR-GNN "
                      "sample is fetchable: `tapestry datasets fetch diginetica-sample`")),
)}


class DatasetNotFound(FileNotFoundError):
    pass


def get(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}: known are {', '.join(DATASETS)} "
                         "(`tapestry datasets list`)") from None


def file_present(folder: Path, name: str) -> Path | None:
    """`folder/name`, else its `.xz` copy (../shared stores large files compressed), else None."""
    for candidate in (folder / name, folder / f"{name}.xz"):
        if candidate.is_file():
            return candidate
    return None


def has_files(folder: Path, files: tuple[str, ...]) -> bool:
    return bool(files) and all(file_present(folder, f) for f in files)


def find(ds: Dataset | str, partial: bool = False, roots: list[Path] | None = None) -> Path | None:
    """The first root's folder holding the whole data set; with partial=True, failing that, the first holding its
    usable incomplete copy (ML-1M's partial ratings). None when no root has it."""
    ds = get(ds) if isinstance(ds, str) else ds
    roots = config.dataset_roots() if roots is None else roots
    for files in (ds.files, ds.partial_files if partial else ()):
        for root in roots:
            if has_files(root / ds.folder, files):
                return root / ds.folder
    return None


def is_partial(ds: Dataset | str, folder: Path) -> bool:
    ds = get(ds) if isinstance(ds, str) else ds
    return not has_files(folder, ds.files) and has_files(folder, ds.partial_files)


def not_found_message(ds: Dataset) -> str:
    roots = ", ".join(str(r) for r in config.dataset_roots())
    how = (f"run `tapestry datasets fetch {ds.name}` to download it (pinned, verified)" if ds.downloads
           else ds.instructions)
    return (f"data set {ds.name!r} not found: no {ds.folder}/ with {', '.join(ds.files)} under {roots} "
            f"($TAPESTRY_DATASETS, ../shared/datasets, the fetch cache); {how}")


def locate(name: str, explicit: str | Path | None = None, partial: bool = True) -> Path:
    """The folder to read data set `name` from: `explicit` when given (as is), else the first root that has it
    (see find; partial=True accepts ML-1M's partial copy when no root has the full one)."""
    if explicit:
        return Path(explicit)
    ds = get(name)
    found = find(ds, partial=partial)
    if found is None:
        raise DatasetNotFound(not_found_message(ds))
    return found
