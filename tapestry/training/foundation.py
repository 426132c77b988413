"""The content SASRec as a Recommender: pre-trained as the global model, or fine-tuned / trained for one tenant.

    glob = FoundationRecommender(epochs=20).fit(merged_opt_in_data)         # pre-training (item ids frozen at 0)
    tuned = FoundationRecommender.from_global(glob).fit(new_tenant_data)    # cold start: shared weights + new ids
    scratch = FoundationRecommender(pretrain=False).fit(new_tenant_data)    # the same model from random weights

What transfers (tapestry.models.sequential.content_sasrec.shared_state): the attribute-name table, the hashed
title-token table, positions and the transformer blocks. The fine-tuned tenant keeps the GLOBAL attribute
vocabulary, so its names are looked up by string (an unknown name -> the OOV row, learned in fine-tuning).

During pre-training (`pretrain=True`) the item-id table stays frozen at zero: every item vector must then come from
content, which is what a new tenant can reuse (with ids free, the id table can absorb what content should carry).
Training, the full softmax and early stopping on validation NDCG are SASRecRecommender's, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tapestry.models.sequential.content_sasrec import ContentSASRec, load_shared_state, shared_state
from tapestry.training.item_content import AttributeVocab, attribute_names, item_token_tables
from tapestry.training.sasrec import SASRecConfig, SASRecRecommender


@dataclass
class FoundationConfig(SASRecConfig):
    title_buckets: int = 16384     # hashed title unigram/bigram buckets (collisions are rare at ~10k titles)
    max_attributes: int = 8        # attribute names kept per item (ML genres: at most 6)
    max_title_tokens: int = 12     # unigrams first, then bigrams
    pretrain: bool = False         # True: the global model's pre-training (item-id table frozen at zero)


class FoundationRecommender(SASRecRecommender):
    Config = FoundationConfig

    def __init__(self, config: FoundationConfig | None = None, *, vocab: AttributeVocab | None = None,
                 shared: dict[str, torch.Tensor] | None = None, transfer: str = "all", **kwargs):
        super().__init__(config, **kwargs)
        self.transfer = transfer      # "content": `shared` holds the content tables only
        self.vocab = vocab            # None: built from the training data's names in fit
        self.shared_init = shared     # a global model's shared state to start from (fine-tuning)
        self._tokens: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_global(cls, global_model: "FoundationRecommender", transfer: str = "all",
                    **overrides) -> "FoundationRecommender":
        """A new tenant's model: the global model's config (with `overrides`, e.g. epochs, seed) and vocabulary,
        starting from its shared weights; pre-training mode off (the tenant's item ids are learned).
        `transfer="content"` takes only the attribute and title tables (positions and blocks start fresh)."""
        if global_model.model is None:
            raise RuntimeError("the global model is not fitted")
        if transfer not in ("all", "content"):
            raise ValueError(f"transfer must be 'all' or 'content', got {transfer!r}")
        cfg = FoundationConfig(**{**global_model._init_kwargs(), "pretrain": False, **overrides})
        shared = shared_state(global_model.model)
        if transfer == "content":
            shared = {k: v for k, v in shared.items() if k.startswith("content.")}
        return cls(cfg, vocab=global_model.vocab, shared=shared, device=global_model.device_name,
                   transfer=transfer)

    def _new_model(self, num_items: int, side_dim: int = 0) -> ContentSASRec:
        if side_dim:
            raise ValueError("the foundation model takes no graph side vectors (item_init_from / graph_from)")
        c = self.cfg
        model = ContentSASRec(num_items, len(self.vocab), c.title_buckets, c.max_attributes, c.max_title_tokens,
                              c.hidden_dim, c.num_blocks, c.num_heads, c.max_len, c.dropout).to(self.device)
        if self._tokens is not None:
            model.set_item_tokens(*self._tokens)
        if self.shared_init is not None:
            load_shared_state(model, self.shared_init, complete=self.transfer == "all")
        if c.pretrain:
            model.item_emb.weight.requires_grad_(False)   # Adam skips parameters without gradients
        return model

    def fit(self, data, graph=None) -> "FoundationRecommender":
        if self.cfg.item_init_from or self.cfg.graph_from:
            raise ValueError("the foundation model takes no graph side vectors (item_init_from / graph_from)")
        if self.vocab is None:
            self.vocab = AttributeVocab.build(attribute_names(data.item_entities)["name"].to_list())
        c = self.cfg
        attrs, titles = item_token_tables(data, self.vocab, c.title_buckets, c.max_attributes, c.max_title_tokens)
        self._tokens = torch.from_numpy(attrs), torch.from_numpy(titles)
        return super().fit(data, graph)

    def _get_state(self):
        return {**super()._get_state(), "vocab": list(self.vocab.names)}

    def _set_state(self, state):
        self.vocab = AttributeVocab(tuple(state["vocab"]))
        self._tokens, self.shared_init = None, None       # both come back with the state dict
        super()._set_state(state)
