"""Export writes a complete, tenant-scoped repository whose artifacts agree with the trained models."""
import importlib
import json
import shutil

import faiss
import numpy as np
import polars as pl
import pytest
import torch

from tapestry.config import DEFAULT_MODELS, TrainConfig
from tapestry.ensembles import run_export
from tapestry.serving.pipeline import RecommendPipeline
from tapestry.inference.encoders import load_encoder
from tapestry.training.pipeline import run_train
from tapestry.training.sasrec import SASRecRecommender

QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def exported(tiny_etl, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-root")
    # Reuse the session's tiny ETL version under this root's tenant.
    shutil.copytree(tiny_etl, root / "tiny" / "etl" / tiny_etl.name)
    # The default line-up (served SASRec + SR-GNN session encoder) plus ComiRec, exported by the round-trip tests.
    trained = run_train("tiny", root, TrainConfig.smoke(models=DEFAULT_MODELS + ("comirec",)), **QUIET)
    return run_export("tiny", root, max_k=20, **QUIET), trained


def test_repository_and_artifacts_are_complete(exported):
    export, _ = exported
    for model in ("feature_lookup", "user_encoder", "retrieval", "filter", "rerank", "recommend"):
        assert (export.model_repository / model / "config.pbtxt").exists()
    for name in ("users.parquet", "items.parquet", "user_encoder.pt", "items.faiss", "popularity.npy", "rerank.npz"):
        assert (export.artifact_dir / name).exists(), name
    manifest = json.loads((export.artifact_dir / "manifest.json").read_text())
    assert manifest["tenant"] == "tiny" and manifest["max_k"] == 20
    assert manifest["user_encoder"] == "user_encoder.pt" and manifest["num_interests"] == 1
    # The default line-up's SR-GNN reads the served item table, so it is exported as the session encoder.
    assert manifest["session_model"] == "srgnn_shared" and (export.artifact_dir / "session_encoder.pt").exists()
    assert export.path.parent.parent.name == "tiny", "exports live under their tenant"
    assert not list(export.path.parent.glob(".tmp-*")), "no temp directories left behind"


def test_faiss_index_holds_sasrec_item_vectors_under_item_ids(exported):
    export, trained = exported
    sasrec = SASRecRecommender.load(trained.path / f"{json.loads((trained.path / 'config.json').read_text())['serve']}.pt")
    emb = sasrec.model.item_embeddings().detach().numpy()
    index = faiss.read_index(str(export.artifact_dir / "items.faiss"))
    assert index.ntotal == emb.shape[0] - 1
    for item in (1, emb.shape[0] // 2, emb.shape[0] - 1):
        np.testing.assert_allclose(index.reconstruct(item), emb[item], rtol=1e-6)
    served = load_encoder(export.artifact_dir / "user_encoder.pt")
    np.testing.assert_array_equal(served.item_embeddings().detach().numpy(), emb)


def test_feature_store_history_is_the_full_time_ordered_event_log(exported, tiny_etl):
    export, _ = exported
    users = pl.read_parquet(export.artifact_dir / "users.parquet")
    events = pl.read_parquet(tiny_etl / "events.parquet")
    u = int(users["user_idx"][3])
    expected = events.filter(pl.col("user_idx") == u)["item_idx"].to_list()  # events.parquet is time-sorted
    assert users.filter(pl.col("user_idx") == u)["history"][0].to_list() == expected


def test_in_process_pipeline_never_recommends_seen_items(exported):
    export, _ = exported
    pipe = RecommendPipeline.from_artifacts(export.artifact_dir)
    users = pl.read_parquet(export.artifact_dir / "users.parquet")
    items = pl.read_parquet(export.artifact_dir / "items.parquet")
    for row in users.head(20).iter_rows(named=True):
        seen = set(items.filter(pl.col("item_idx").is_in(row["history"]))["item_id"].to_list())
        result = pipe.recommend("tiny", row["user_id"], k=10)
        assert result.strategy == "personalized"
        assert not seen & set(result.item_ids)
        assert result.scores == sorted(result.scores, reverse=True)


def test_session_encoder_must_share_the_served_item_table(tiny_etl):
    from tapestry.training.pipeline import resolve_session, _check_config

    cfg = TrainConfig.smoke(models=("popularity", "sasrec", "srgnn"), serve="sasrec", session="srgnn")
    with pytest.raises(ValueError, match="must score against the served model's item table"):
        _check_config(cfg)
    assert resolve_session(TrainConfig.smoke(models=("popularity", "sasrec"), serve="sasrec")).session == ""
    assert resolve_session(TrainConfig.smoke()).session == "srgnn_shared"


def test_an_approximate_index_is_tuned_and_served_with_its_parameters(exported):
    """`--index IVF...`: tuned to the target recall on real users' vectors; retrieval loads the tuned nprobe."""
    from tapestry.serving.retrieval import Retrieval

    export, _ = exported
    root = export.path.parents[2]
    ivf = run_export("tiny", root, max_k=20, index="IVF8,Flat", **QUIET)
    entry = json.loads((ivf.artifact_dir / "manifest.json").read_text())["index"]
    assert entry["factory"] == "IVF8,Flat" and entry["reached"] and entry["recall_at_k"] >= 0.95
    assert (ivf.artifact_dir / "items.faiss.json").exists()
    loaded = Retrieval.from_artifacts(ivf.artifact_dir).index
    assert faiss.extract_index_ivf(faiss.downcast_index(loaded.index)).nprobe == entry["params"]["nprobe"]
    user = pl.read_parquet(ivf.artifact_dir / "users.parquet")["user_id"][0]
    assert len(RecommendPipeline.from_artifacts(ivf.artifact_dir).recommend("tiny", user, k=10).item_ids) == 10
    flat = json.loads((export.artifact_dir / "manifest.json").read_text())["index"]
    assert flat == {"factory": "Flat"}          # "auto" on a 100-item catalogue


# ---- Round trip: the exported files, read with plain torch / FAISS calls, answer as the trained model does ------
# Independent of the serving stages (tapestry.serving.*): the encoder file is rebuilt from the class it names,
# the history is left-padded here, FAISS is searched directly and K interests are merged here by max-sim.

def _plain_encoder(path) -> torch.nn.Module:
    state = torch.load(path, map_location="cpu", weights_only=True)
    module_name, _, cls_name = state["target"].partition(":")
    module = getattr(importlib.import_module(module_name), cls_name)(**state["kwargs"])
    module.load_state_dict(state["state_dict"])
    return module.eval()


def _faiss_top_k(encoder, index, history, k: int) -> tuple[list[int], np.ndarray]:
    """Encode the newest max_len events (left-padded), search every interest vector, keep each item's best score
    (max-sim), drop the history, best k first."""
    window = np.asarray(history[-encoder.max_len:], dtype=np.int64)
    seqs = np.zeros((1, encoder.max_len), dtype=np.int64)
    seqs[0, encoder.max_len - len(window):] = window
    with torch.no_grad():
        vectors = encoder.encode(torch.from_numpy(seqs))[0].numpy().reshape(-1, index.d)      # [K, D]
    # Enough per interest that the best k unseen items by max-sim are in the union (k + |history| each).
    scores, ids = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k + len(set(history)))
    best: dict[int, float] = {}
    for row_ids, row_scores in zip(ids, scores):
        for item, score in zip(row_ids.tolist(), row_scores.tolist()):
            if item >= 0 and item not in set(history):
                best[item] = max(best.get(item, -np.inf), score)
    top = sorted(best.items(), key=lambda kv: -kv[1])[:k]
    return [i for i, _ in top], np.array([s for _, s in top], dtype=np.float32)


def _assert_same_top_k(encoder, index, model, user_idx: int, history, k: int = 10):
    items, scores = _faiss_top_k(encoder, index, history, k)
    expected_items, expected_scores = model.recommend(user_idx, np.asarray(history, dtype=np.int64), k)
    assert len(items) == k
    assert items == expected_items.tolist(), (user_idx, items, expected_items.tolist())
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def _trained(trained, name: str):
    from tapestry.training import registry
    from tapestry.training.base import Recommender

    return Recommender.load(trained.path / registry.get(name).filename, device="cpu")


def test_exported_user_encoder_and_index_give_the_trained_models_top_k(exported):
    export, trained = exported
    art = export.artifact_dir
    manifest = json.loads((art / "manifest.json").read_text())
    encoder = _plain_encoder(art / manifest["user_encoder"])
    index = faiss.read_index(str(art / "items.faiss"))
    model = _trained(trained, manifest["served_model"])
    users = pl.read_parquet(art / "users.parquet").filter(pl.col("history").list.len() > 0)
    for row in users.head(12).iter_rows(named=True):
        # users.parquet holds every split's events: the model is asked with that same full history.
        _assert_same_top_k(encoder, index, model, row["user_idx"], row["history"])


def test_exported_session_encoder_and_index_give_the_trained_srgnn_top_k(exported):
    export, trained = exported
    art = export.artifact_dir
    manifest = json.loads((art / "manifest.json").read_text())
    encoder = _plain_encoder(art / manifest["session_encoder"])
    index = faiss.read_index(str(art / "items.faiss"))
    model = _trained(trained, manifest["session_model"])
    rng = np.random.default_rng(0)
    for length in (1, 2, 3, 5, 8, 30):        # anonymous sessions (user 0), 30 > max_len: the newest are read
        session = rng.choice(np.arange(1, manifest["num_items"]), size=length, replace=False).tolist()
        _assert_same_top_k(encoder, index, model, 0, session)


def test_exported_multi_interest_encoder_gives_comirec_max_sim_top_k(exported):
    export, trained = exported
    comirec = run_export("tiny", export.path.parents[2], max_k=20, serve="comirec", **QUIET)
    art = comirec.artifact_dir
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["served_model"] == "comirec" and manifest["num_interests"] > 1
    encoder = _plain_encoder(art / manifest["user_encoder"])
    index = faiss.read_index(str(art / "items.faiss"))
    model = _trained(trained, "comirec")
    users = pl.read_parquet(art / "users.parquet").filter(pl.col("history").list.len() > 0)
    for row in users.head(12).iter_rows(named=True):
        _assert_same_top_k(encoder, index, model, row["user_idx"], row["history"])


def test_exported_two_tower_user_tower_and_index_give_its_top_k(exported):
    # The default line-up's other retriever: serve="auto" exports it when it wins on validation (ML-1M).
    export, trained = exported
    tower = run_export("tiny", export.path.parents[2], max_k=20, serve="two_tower", **QUIET)
    art = tower.artifact_dir
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["served_model"] == "two_tower" and manifest["session_encoder"] is None
    encoder = _plain_encoder(art / manifest["user_encoder"])
    index = faiss.read_index(str(art / "items.faiss"))
    model = _trained(trained, "two_tower")
    users = pl.read_parquet(art / "users.parquet").filter(pl.col("history").list.len() > 0)
    for row in users.head(12).iter_rows(named=True):
        _assert_same_top_k(encoder, index, model, row["user_idx"], row["history"])


def test_a_two_tower_with_user_attributes_is_refused_not_served_without_them(tiny_etl, tmp_path):
    # The user-encoder stage reads histories only: serving this model would answer with vectors it never produced.
    shutil.copytree(tiny_etl, tmp_path / "tiny" / "etl" / tiny_etl.name)
    cfg = TrainConfig.smoke(models=("popularity", "two_tower"), serve="two_tower", session="",
                            params={"two_tower": {"use_user_attrs": True}})
    run_train("tiny", tmp_path, cfg, **QUIET)
    with pytest.raises(ValueError, match="use_user_attrs=True; the served user encoder reads histories only"):
        run_export("tiny", tmp_path, max_k=20, **QUIET)


def test_a_model_that_is_not_a_retriever_cannot_be_served(exported):
    _, trained = exported
    with pytest.raises(ValueError, match=r"lightgcn \(role item_encoder\) cannot be served"):
        run_export("tiny", trained.path.parents[2], max_k=20, serve="lightgcn", **QUIET)
