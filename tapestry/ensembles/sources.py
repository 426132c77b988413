"""`tapestry export --sources a,b`: the extra candidate sources' servable artefacts (issue 17 item 4).

Each named model of the trained run becomes one source of tapestry.serving.multi_source.MultiSourceRetrieval:
- a retriever (registry role "retriever", e.g. `two_tower`): its user tower (`source_<name>.pt`, the user-encoder
  file format) and an index over its item table (`source_<name>.faiss`, the same index choice as the served one);
- a model with item-to-item recall (`similar_items`, e.g. `graph_filter`): its neighbour table
  (`source_<name>.npz`: each item's top-`neighbours` items and scores, 0 / 0.0 where it has fewer).
The served encoder is source 0; its item table is written too (`served_item_embeddings.npy`), so that every
merged candidate gets the served encoder's score (the feature the reranker was trained on).

The manifest's "sources" list records them in merge order; without `--sources` nothing here runs and the export is
what it was.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tapestry.serving.multi_source import SERVED_ITEMS_FILE


@dataclass
class SourcesConfig:
    neighbours: int = 100      # M: neighbours kept per item in a neighbour table (the serving approximation)
    recent_items: int = 20     # the newest distinct history items whose neighbours are summed
    batch_size: int = 256      # items per filter pass while building a neighbour table


def parse_sources(sources) -> list[str]:
    """"a,b" or a sequence -> names in order, without blanks and repeats."""
    if not sources:
        return []
    names = sources.split(",") if isinstance(sources, str) else list(sources)
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def check_sources(names: list[str], served: str, train_cfg: dict) -> None:
    """Refuse, before anything is written, a source the run did not train, the served model itself, or a model
    that is neither a retriever nor an item-to-item recall."""
    from tapestry.training import registry

    for name in names:
        if name == served:
            raise ValueError(f"--sources {name}: it is the served model, already source 0 of retrieval")
        if name not in train_cfg["models"]:
            raise ValueError(f"--sources {name}: not trained in this run (trained: {train_cfg['models']})")
        spec = registry.get(name)
        if spec.role != "retriever" and not hasattr(spec.recommender_class(), "similar_items"):
            raise ValueError(f"--sources {name}: role {spec.role} is not a candidate source (a retriever, or a model "
                             "with item-to-item recall such as graph_filter)")


def neighbour_table(model, neighbours: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(ids [items, M] int64, scores [items, M] float32): each item's `similar_items` from itself alone; row 0 and
    the slots past an item's last graph neighbour are 0."""
    num_items = model.num_items
    m = min(neighbours, num_items)
    ids = np.zeros((num_items, m), dtype=np.int64)
    scores = np.zeros((num_items, m), dtype=np.float32)
    for start in range(1, num_items, batch_size):
        items = np.arange(start, min(start + batch_size, num_items))
        top_ids, top_scores = model.similar_items([np.array([i]) for i in items], k=m)
        top_ids, top_scores = top_ids.cpu().numpy(), top_scores.float().cpu().numpy()
        ids[items] = top_ids
        scores[items] = np.where(top_ids > 0, top_scores, 0.0)
    return ids, scores


def export_sources(names: list[str], served: str, served_item_emb: np.ndarray, models_dir: Path, art: Path,
                   build_index, cfg: SourcesConfig | None = None, log=print) -> list[dict]:
    """Write the sources' artefacts into `art`; returns the manifest's "sources" entries (served first).
    `build_index(module, item_emb)`: the FAISS index the export builds for the served encoder, for another table."""
    from tapestry.inference.encoders import check_servable, save_encoder
    from tapestry.serving.ann import save_index
    from tapestry.training import registry
    from tapestry.training.base import Recommender

    cfg = cfg or SourcesConfig()
    np.save(art / SERVED_ITEMS_FILE, served_item_emb.astype(np.float32))
    entries = [{"name": served, "kind": "served", "item_table": SERVED_ITEMS_FILE}]
    for name in names:
        spec = registry.get(name)
        model = Recommender.load(models_dir / spec.filename, device="cpu")
        if spec.role == "retriever":
            if getattr(model.cfg, "use_user_attrs", False):
                raise ValueError(f"--sources {name}: trained with use_user_attrs=True; its served user tower reads "
                                 "histories only, so its candidates would differ from the evaluated model")
            module = model.serving_module()
            check_servable(module, name)
            item_emb = module.item_embeddings().detach().cpu().float().numpy()
            save_encoder(module, art / f"source_{name}.pt")
            save_index(build_index(module, item_emb), art / f"source_{name}.faiss")
            entries.append({"name": name, "kind": "encoder", "encoder": f"source_{name}.pt",
                            "index": f"source_{name}.faiss"})
        else:
            ids, scores = neighbour_table(model, cfg.neighbours, cfg.batch_size)
            np.savez(art / f"source_{name}.npz", neighbours=ids, scores=scores)
            entries.append({"name": name, "kind": "neighbours", "table": f"source_{name}.npz",
                            "neighbours": int(ids.shape[1]), "recent_items": int(cfg.recent_items)})
        log(f"[export] candidate source {name}: {entries[-1]['kind']}")
    entries[0]["config"] = asdict(cfg)
    return entries
