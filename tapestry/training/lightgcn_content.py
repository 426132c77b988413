"""LightGCN + item content (issue 19) as a Recommender: the loop over tapestry.models.content.graph.ContentLightGCN.

Item content (tapestry.etl.content: the stored catalogue table when the ETL directory has one, else the titles and
entity values the ETL kept) goes through a content encoder (tapestry.models.content.encoders: hashed n-grams by
default, a local sentence-transformers checkpoint when `text_checkpoint` is set) and is added to the items' layer-0
vectors; the encoder trains jointly with the ID embeddings on the usual LightGCN loss.

The node space is users, then EVERY catalogue item (the ETL's items, then cold items without events), then the
entity nodes (brand, category, genre, ... from the content table), so a cold item is linked to its entity
neighbours. `score` / `item_embeddings` cover the ETL's items (the shared API: [B, num_items]);
`catalogue_item_embeddings` / `recommend_catalogue` add the cold items, for retrieval over the whole catalogue.
`content=False` is the ablation: the same graph and cold items, no encoder (a cold item's vector is then its
neighbours' alone).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tapestry.etl.content import ItemContent, load_item_content
from tapestry.models.content.encoders import HashedNgramEncoder, SentenceTransformerEncoder, sparse_parameters
from tapestry.models.content.graph import ContentLightGCN
from tapestry.nn.propagation import normalized_adjacency
from tapestry.training import data_parallel
from tapestry.training.base import Recommender, seeded, shuffled_epoch
from tapestry.training.lightgcn import LightGCNConfig
from tapestry.training.loop import run_epochs
from tapestry.training.losses import bpr_loss, sampled_softmax_loss


@dataclass
class LightGCNContentConfig(LightGCNConfig):
    """LightGCN's hyper-parameters (same defaults but the loss) plus the content encoder's."""
    # "softmax" (cosine, see tapestry.training.lightgcn) by default: with BPR's inner product a cold item's vector
    # (content alone, few or no neighbours) has a smaller norm than a warm one's and never reaches a top-k (planted
    # test: 0 % of users vs 70 % with cosine). entity_nodes also links cold items to their category/brand/genre nodes.
    loss: str = "softmax"
    content: bool = True              # False: no content encoder (the ablation)
    id_dropout: float = 0.0           # share of items trained from content alone at each step (cold-start recipe)
    text_checkpoint: str = ""         # local sentence-transformers directory; "" = the hashed n-gram encoder
    text_buckets: int = 1 << 16       # hashed text n-gram buckets
    category_buckets: int = 1 << 14   # hashed `type=value` category buckets
    word_ngrams: int = 2              # words and word bigrams
    char_ngrams: tuple[int, ...] = (3,)   # character trigrams of each word (typos, morphology)


class _Optimizers:
    """Adam for the dense parameters and SparseAdam for the hashed bags, behind the one-optimizer interface the
    shared minibatch loop (tapestry.training.base.shuffled_epoch) calls."""

    def __init__(self, model: torch.nn.Module, lr: float):
        sparse = sparse_parameters(model)
        dense = [p for p in model.parameters() if all(p is not s for s in sparse)]
        self.optimizers = [torch.optim.Adam(dense, lr=lr)] + ([torch.optim.SparseAdam(sparse, lr=lr)] if sparse else [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


class LightGCNContentRecommender(Recommender):
    Config = LightGCNContentConfig
    parallelism = "data"            # shuffled_epoch: DDP under --distributed N (full propagation on every rank)

    def __init__(self, config: LightGCNContentConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        if self.cfg.loss not in ("bpr", "softmax"):
            raise ValueError(f"LightGCN loss must be 'bpr' or 'softmax', got {self.cfg.loss!r}")
        self.num_users: int | None = None
        self._user_emb: torch.Tensor | None = None
        self._catalogue_emb: torch.Tensor | None = None     # [num_items + cold, D]
        self.catalogue_ids: list[str | None] = []

    def _encoder(self, content: ItemContent):
        c = self.cfg
        if not c.content:
            return None
        if c.text_checkpoint:
            from tapestry.models.content.sentence import checkpoint_dim

            return SentenceTransformerEncoder(c.text_checkpoint, checkpoint_dim(c.text_checkpoint), c.embedding_dim,
                                              c.category_buckets, content.numeric.shape[1])
        return HashedNgramEncoder(c.embedding_dim, c.text_buckets, c.category_buckets, content.numeric.shape[1],
                                  c.word_ngrams, tuple(c.char_ngrams))

    def _graph(self, data, content: ItemContent):
        """(edge_index [2, E] undirected, num_nodes, item offset, id mask [num_nodes])."""
        num_users, n_cat = data.num_users, len(content)
        i_off = num_users
        edges = [np.stack([data.train["user_idx"].to_numpy(), data.train["item_idx"].to_numpy() + i_off])]
        num_entities = 0
        if self.cfg.entity_nodes:
            pairs = content.category_pairs()
            if pairs.height:
                keys = (pairs["entity_type"] + "=" + pairs["entity_value"]).to_numpy()
                _, entity = np.unique(keys, return_inverse=True)
                num_entities = int(entity.max()) + 1
                edges.append(np.stack([pairs["catalogue_idx"].to_numpy() + i_off, entity + i_off + n_cat]))
        ei = torch.from_numpy(np.concatenate(edges, axis=1).astype(np.int64))
        ei = torch.cat([ei, ei.flip(0)], dim=1)
        num_nodes = num_users + n_cat + num_entities
        mask = torch.ones(num_nodes)
        mask[0] = 0.0                                             # OOV user
        mask[i_off] = 0.0                                         # padding item
        mask[i_off + content.num_warm:i_off + n_cat] = 0.0        # cold items: no events train an ID row
        return ei, num_nodes, i_off, mask

    def fit(self, data, graph=None) -> "LightGCNContentRecommender":
        c = self.cfg
        content = load_item_content(data)
        self.num_users, self.num_items = data.num_users, data.num_items
        # Negatives are drawn among items with events (1 .. num_warm-1): with ETLConfig.cold_items the ETL's last
        # items have none, and pushing them away from every user would bury exactly what content should place.
        num_warm = content.num_warm
        self.catalogue_ids = list(content.item_ids)
        ei, num_nodes, i_off, mask = self._graph(data, content)
        adj = normalized_adjacency(ei, num_nodes).to(self.device)
        users = torch.from_numpy(data.train["user_idx"].to_numpy().astype(np.int64)).to(self.device)
        items = torch.from_numpy(data.train["item_idx"].to_numpy().astype(np.int64) + i_off).to(self.device)
        items_slice = slice(i_off, i_off + len(content))

        with seeded(self.device, c.seed):
            encoder = self._encoder(content)
            features = None
            if encoder is not None:
                features = {k: v.to(self.device) for k, v in
                            encoder.featurize(content.text, content.categories, content.numeric).items()}
            model = ContentLightGCN(num_nodes, items_slice, mask, encoder, c.embedding_dim, c.num_layers,
                                    c.id_dropout).to(self.device)
            opt = _Optimizers(model, c.lr)

            def batch_loss(idx):
                idx = idx.to(self.device)
                u, i = users[idx], items[idx]
                emb = model(adj, features)
                if c.loss == "bpr":      # uniform negatives over the warm items (1..num_warm-1)
                    # Drawn for the whole global batch, then this process's share (as LightGCN's): data-parallel
                    # runs draw the same negatives as one process.
                    share, total = data_parallel.share_of(idx)
                    j = (torch.randint(1, num_warm, (total,), device=self.device) + i_off)[share]
                    eu = emb[u]
                    return bpr_loss((eu * emb[i]).sum(-1), (eu * emb[j]).sum(-1),
                                    model.embedding.weight[torch.cat([u, i, j])], c.weight_decay), 1, len(idx)
                j = torch.randint(1, num_warm, (c.num_negatives,), device=self.device) + i_off
                # The epoch's loss: a mean per step; the loss: a mean per edge (data parallelism weighs shares by it).
                return sampled_softmax_loss(emb[u], emb[i], emb[j], c.temperature), 1, len(idx)

            def refresh():
                with torch.no_grad():
                    emb = model(adj, features)
                    if c.loss == "softmax":
                        emb = torch.nn.functional.normalize(emb, dim=-1)
                self._user_emb = emb[:self.num_users].clone()
                self._catalogue_emb = emb[items_slice].clone()
                self._user_emb[0] = 0.0
                self._catalogue_emb[0] = 0.0

            run_epochs(self, model, c.epochs, "lightgcn_content",
                       lambda beat: shuffled_epoch(model, opt, users.numel(), c.batch_size, batch_loss, beat),
                       data, c.patience, refresh=refresh)
        return self

    # ---- vectors and scores ------------------------------------------------------------------------------
    def user_embeddings(self) -> torch.Tensor:
        return self._user_emb

    def item_embeddings(self) -> torch.Tensor:
        """[num_items, D]: the ETL's items (row 0 = zeros), aligned with every other model's item table."""
        return self._catalogue_emb[:self.num_items]

    def catalogue_item_embeddings(self) -> torch.Tensor:
        """[num_items + cold, D]: the ETL's items, then the cold items (ids: `catalogue_ids`)."""
        return self._catalogue_emb

    def _user_vectors(self, user_idx: np.ndarray) -> torch.Tensor:
        u = torch.from_numpy(np.array(user_idx, dtype=np.int64)).to(self.device)
        u = torch.where((u > 0) & (u < self.num_users), u, torch.zeros_like(u))
        return self._user_emb[u]

    def score(self, user_idx: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        # Transductive, as LightGCN: unknown users get the zero vector (flat scores: serve popularity).
        return self._mask_padding(self._user_vectors(user_idx) @ self.item_embeddings().T)

    def recommend_catalogue(self, user_idx: int, history: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the whole catalogue (cold items included): (catalogue indices, scores), best first, never
        the padding row or the history."""
        scores = (self._user_vectors(np.array([user_idx])) @ self._catalogue_emb.T)[0].float().clone()
        scores[0] = -torch.inf
        history = np.asarray(history, dtype=np.int64)
        if history.size:
            scores[torch.as_tensor(history, device=scores.device)] = -torch.inf
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))
        return top.indices.cpu().numpy(), top.values.cpu().numpy()

    # ---- persistence -------------------------------------------------------------------------------------
    def _get_state(self):
        return {"num_users": self.num_users, "num_items": self.num_items, "user_emb": self._user_emb.cpu(),
                "catalogue_emb": self._catalogue_emb.cpu(), "catalogue_ids": list(self.catalogue_ids)}

    def _set_state(self, state):
        self.num_users, self.num_items = int(state["num_users"]), int(state["num_items"])
        self._user_emb = state["user_emb"].to(self.device)
        self._catalogue_emb = state["catalogue_emb"].to(self.device)
        self.catalogue_ids = list(state["catalogue_ids"])
