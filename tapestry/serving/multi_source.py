"""Stage 3 with several candidate sources (issue 17 item 4): the served encoder's FAISS results merged with each
extra source's, de-duplicated, round-robin by rank to the same candidate budget.

An export written with `tapestry export --sources two_tower,graph_filter` (tapestry/ensembles/sources.py) serves
this stage as `retrieval`; without `--sources` the export serves tapestry.serving.retrieval.Retrieval unchanged.
The sources, in the manifest's order ("sources"), source 0 always being the served encoder:

- `encoder`: another retriever's user tower (`source_<name>.pt`) over its own FAISS index (`source_<name>.faiss`),
  fed the request's HISTORY;
- `neighbours`: item-to-item graph recall (`source_<name>.npz`: each item's top-M neighbours and their scores,
  from the closed-form graph filter): the neighbour scores of the user's `recent` newest items, summed. The
  filter is linear in its input signal, so with M = all items this is exactly its `similar_items`; top-M
  truncation is the serving approximation.

Every source lists its best `num_candidates` items without the user's SEEN and EXCLUDE items (so the budget is
spent on items the filter stage keeps); the merged list takes rank 1 of every source, then rank 2, ..., skipping
items already taken, until `num_candidates` items. Each candidate carries per-source scores and ranks
(CANDIDATE_SOURCE_SCORES / CANDIDATE_SOURCE_RANKS, [N, S], rank 0 = a source's best; MISSING_SCORE / MISSING_RANK
where a source did not list it). CANDIDATE_SCORES stays what the feature reranker was trained on: the served
encoder's score (best inner product over its interest vectors) of every candidate, whichever source found it. A
cold user (no interest vector) gets popularity, as in the single-source stage, every source column missing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tapestry.inference.encoders import interest_vectors, load_encoder
from tapestry.inference.padding import left_pad, trim_padding
from tapestry.serving import validate as v
from tapestry.serving.ann import load_index
from tapestry.serving.retrieval import Retrieval, merge_max_sim
from tapestry.serving.stage import checked_rows, export_manifest, one_row

MISSING_RANK = -1
MISSING_SCORE = np.float32(np.nan)   # never mistaken for a real score (inner products may be 0 or negative)
SERVED_ITEMS_FILE = "served_item_embeddings.npy"   # the served encoder's item table, for CANDIDATE_SCORES


def top_unblocked(items: np.ndarray, scores: np.ndarray, blocked: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A best-first list without padding (id <= 0), blocked items and repeats, cut to n."""
    keep = (items > 0) & ~np.isin(items, blocked)
    items, scores = items[keep], scores[keep]
    _, first = np.unique(items, return_index=True)
    first = np.sort(first)[:n]
    return items[first].astype(np.int64), scores[first].astype(np.float32)


def merge_round_robin(lists: list[tuple[np.ndarray, np.ndarray]], budget: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per source (items, scores), best first and distinct -> (merged items [N], per-source scores [N, S], per-source
    ranks [N, S]): rank r of every source in source order, r = 0, 1, ..., an item taken once, N <= budget (fewer
    when the sources together list fewer distinct items)."""
    position: dict[int, int] = {}
    merged: list[int] = []
    depth = max((len(items) for items, _ in lists), default=0)
    for rank in range(depth):
        for items, _ in lists:
            if len(merged) == budget:
                break
            if rank < len(items) and int(items[rank]) not in position:
                position[int(items[rank])] = len(merged)
                merged.append(int(items[rank]))
    source_scores = np.full((len(merged), len(lists)), MISSING_SCORE, dtype=np.float32)
    source_ranks = np.full((len(merged), len(lists)), MISSING_RANK, dtype=np.int64)
    for s, (items, scores) in enumerate(lists):
        for rank, (item, score) in enumerate(zip(items.tolist(), scores.tolist())):
            row = position.get(int(item))
            if row is not None:
                source_scores[row, s], source_ranks[row, s] = score, rank
    return np.asarray(merged, dtype=np.int64), source_scores, source_ranks


class EncoderSource:
    """Another retriever: its user tower over the request's history, its own FAISS index (both on the CPU: the
    served encoder's GPU placement is user_encoder's, and a second tower of this size is cheap on a core)."""

    kind = "encoder"

    def __init__(self, name: str, model: torch.nn.Module, index):
        self.name, self.model, self.index = name, model.eval(), index

    @torch.inference_mode()
    def lists(self, histories: list[np.ndarray], blocked: list[np.ndarray], n: int) -> list[tuple]:
        out: list = [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * len(histories)
        warm = [i for i, h in enumerate(histories) if (h > 0).any()]
        if not warm:
            return out
        seqs = trim_padding(torch.from_numpy(left_pad([histories[i][histories[i] > 0] for i in warm],
                                                       self.model.max_len, width=self.model.max_len)))
        vectors = interest_vectors(self.model, seqs).float().numpy()         # [B, K, D]
        k = min(n + max(b.size for b in blocked), self.index.ntotal)
        scores, ids = self.index.search(np.ascontiguousarray(vectors.reshape(-1, vectors.shape[2])), k)
        interests = vectors.shape[1]
        for row, i in enumerate(warm):
            span = slice(row * interests, (row + 1) * interests)
            items, best = merge_max_sim(scores[span], ids[span], k)
            out[i] = top_unblocked(items, best, blocked[i], n)
        return out


class NeighbourSource:
    """Item-to-item recall: the neighbour scores of the user's `recent` newest distinct items, summed."""

    kind = "neighbours"

    def __init__(self, name: str, neighbours: np.ndarray, scores: np.ndarray, recent: int):
        if neighbours.shape != scores.shape or neighbours.ndim != 2:
            raise ValueError(f"neighbour table {name}: items {neighbours.shape} and scores {scores.shape} differ")
        self.name, self.neighbours, self.scores, self.recent = name, neighbours, scores, int(recent)

    def one(self, history: np.ndarray, blocked: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        history = history[(history > 0) & (history < self.neighbours.shape[0])]
        newest_first = history[::-1]
        _, first = np.unique(newest_first, return_index=True)
        recent = newest_first[np.sort(first)][: self.recent]
        ids, scores = self.neighbours[recent].ravel(), self.scores[recent].ravel()
        keep = ids > 0                                    # 0: a slot with no graph path (fewer than M neighbours)
        items, inverse = np.unique(ids[keep], return_inverse=True)
        summed = np.bincount(inverse, weights=scores[keep].astype(np.float64), minlength=items.size)
        order = np.argsort(-summed, kind="stable")        # ties: the lower item id first
        return top_unblocked(items[order], summed[order], blocked, n)

    def lists(self, histories: list[np.ndarray], blocked: list[np.ndarray], n: int) -> list[tuple]:
        return [self.one(h, b, n) for h, b in zip(histories, blocked)]


def load_source(artifact_dir: Path, entry: dict):
    """One manifest "sources" entry (written by tapestry.ensembles.sources) -> its source object."""
    name, kind = entry["name"], entry["kind"]
    if kind == "encoder":
        return EncoderSource(name, load_encoder(artifact_dir / entry["encoder"]),
                             load_index(artifact_dir / entry["index"]))
    if kind == "neighbours":
        with np.load(artifact_dir / entry["table"]) as table:
            return NeighbourSource(name, table["neighbours"], table["scores"], entry["recent_items"])
    raise ValueError(f"source {name!r}: unknown kind {kind!r} (this tapestry serves 'encoder' and 'neighbours')")


class MultiSourceRetrieval(Retrieval):
    inputs = Retrieval.inputs + ("HISTORY",)
    outputs = Retrieval.outputs + ("CANDIDATE_SOURCE_SCORES", "CANDIDATE_SOURCE_RANKS")

    def __init__(self, tenant: str, index, popularity: np.ndarray, num_candidates: int, item_table: np.ndarray,
                 sources: list, served_name: str = "served", device_index=None):
        super().__init__(tenant, index, popularity, num_candidates, device_index)
        self.item_table = np.ascontiguousarray(item_table, dtype=np.float32)
        self.sources = list(sources)
        self.source_names = [served_name] + [s.name for s in self.sources]

    @classmethod
    def from_artifacts(cls, artifact_dir: Path) -> "MultiSourceRetrieval":
        artifact_dir = Path(artifact_dir)
        base = Retrieval.from_artifacts(artifact_dir)
        m = export_manifest(artifact_dir)
        extra = [load_source(artifact_dir, e) for e in m["sources"][1:]]   # entry 0: the served encoder itself
        return cls(base.tenant, base.index, base.popularity, base.num_candidates,
                   np.load(artifact_dir / m["sources"][0]["item_table"]), extra, m["served_model"], base.device_index)

    def __call__(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return one_row(self.batch([t]))

    def _request(self, t: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(history, blocked items: SEEN + EXCLUDE + the padding id)."""
        num_items = self.popularity.size
        history = v.item_indices(t, "HISTORY", num_items, max_size=num_items)
        blocked = np.concatenate([v.item_indices(t, "SEEN", num_items, max_size=num_items),
                                  v.item_indices(t, "EXCLUDE", num_items, max_size=num_items), [0]])
        return history, blocked

    def batch(self, rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """The single-source stage's answer per row (one FAISS search), then each extra source's lists for the rows
        with an interest vector (one forward + one search per encoder source), merged per row."""
        served = super().batch(rows)
        out, passed = checked_rows(rows, self._request)
        num_sources = 1 + len(self.sources)
        warm: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i, (history, blocked) in passed:
            if isinstance(served[i], Exception):
                out[i] = served[i]
            elif not rows[i]["USER_EMB"].any():              # cold: popularity, as Retrieval answered
                n = served[i]["CANDIDATES"].size
                out[i] = {**served[i], "CANDIDATE_SOURCE_SCORES": np.full((n, num_sources), MISSING_SCORE, np.float32),
                          "CANDIDATE_SOURCE_RANKS": np.full((n, num_sources), MISSING_RANK, np.int64)}
            else:
                warm.append((i, history, blocked))
        if not warm:
            return out
        histories, blocked = [h for _, h, _ in warm], [b for _, _, b in warm]
        per_source = [source.lists(histories, blocked, self.num_candidates) for source in self.sources]
        for row, (i, _, block) in enumerate(warm):
            first = top_unblocked(served[i]["CANDIDATES"], served[i]["CANDIDATE_SCORES"], block, self.num_candidates)
            items, source_scores, source_ranks = merge_round_robin(
                [first] + [lists[row] for lists in per_source], self.num_candidates)
            if items.size == 0:   # every source's items were seen or excluded: the filter stage says so
                items = np.zeros(1, np.int64)   # the padding id alone
                source_scores = np.full((1, num_sources), MISSING_SCORE, np.float32)
                source_ranks = np.full((1, num_sources), MISSING_RANK, np.int64)
            emb = np.asarray(rows[i]["USER_EMB"], dtype=np.float32).reshape(-1, self.item_table.shape[1])
            emb = emb[emb.any(axis=1)]
            scores = (self.item_table[items] @ emb.T).max(axis=1)
            out[i] = {"CANDIDATES": items, "CANDIDATE_SCORES": scores.astype(np.float32),
                      "CANDIDATE_SOURCE_SCORES": source_scores, "CANDIDATE_SOURCE_RANKS": source_ranks}
        return out


RETRIEVAL_MODEL = "retrieval"
MODEL_PY = ('"""Thin Triton adapter of multi-source retrieval (written by '
            'tapestry.serving.multi_source.apply_sources); the logic is '
            'tapestry.serving.multi_source.MultiSourceRetrieval."""\n'
            "from tapestry.serving.multi_source import MultiSourceRetrieval\n"
            "from tapestry.serving.triton_adapter import triton_model\n\n"
            "TritonPythonModel = triton_model(MultiSourceRetrieval)\n")


def apply_sources(model_repository: Path) -> None:
    """Turn an export's `retrieval` model (in a repository being written) into MultiSourceRetrieval: HISTORY as an
    extra input (also mapped in the ensemble's retrieval step), the per-source outputs declared (the ensemble does
    not map them: the rerank stage does not read them yet; a direct call to `retrieval` returns them)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    from tapestry.artifacts import atomic_write_text
    from tapestry.serving.tenant_repository import ENSEMBLE, read_config

    repo = Path(model_repository)
    config = read_config(repo / RETRIEVAL_MODEL / "config.pbtxt")
    history = config.input.add(name="HISTORY", data_type=pb.TYPE_INT64, dims=[-1])
    history.allow_ragged_batch = config.max_batch_size > 0
    config.output.add(name="CANDIDATE_SOURCE_SCORES", data_type=pb.TYPE_FP32, dims=[-1, -1])
    config.output.add(name="CANDIDATE_SOURCE_RANKS", data_type=pb.TYPE_INT64, dims=[-1, -1])
    atomic_write_text(repo / RETRIEVAL_MODEL / "config.pbtxt", "# retrieval with several candidate sources "
                      "(tapestry.serving.multi_source)\n" + text_format.MessageToString(config))
    for version in (p for p in (repo / RETRIEVAL_MODEL).iterdir() if p.is_dir() and p.name.isdigit()):
        atomic_write_text(version / "model.py", MODEL_PY)
    ensemble = read_config(repo / ENSEMBLE / "config.pbtxt")
    step = next(s for s in ensemble.ensemble_scheduling.step if s.model_name == RETRIEVAL_MODEL)
    step.input_map["HISTORY"] = "HISTORY"
    atomic_write_text(repo / ENSEMBLE / "config.pbtxt", f"# {ENSEMBLE}: retrieval with several candidate sources "
                      "(tapestry.serving.multi_source)\n" + text_format.MessageToString(ensemble))
