"""SASRec whose item vectors are built from content: the transferable model behind tenant cold start.

item vector(i) = id_emb[i] + mean(attribute embeddings of i) + mean(hashed title-token embeddings of i)

The attribute and title tables are indexed by tokens that mean the same thing in every tenant (attribute NAME
strings, hashed title words: tapestry.training.item_content), so they, the positional table and the transformer
blocks form the SHARED part a global model hands to a new tenant. The id table and the per-item token buffers are
the TENANT part: a new tenant gets its own (ids start at zero, so a fine-tuned model first scores items by content
alone and learns id corrections where it has events). `TENANT_KEYS` names the tenant part of the state dict.

Same input convention and padding behaviour as SASRec (this class only changes how item rows are formed).
A separate content-encoder family (hashed n-grams) may land in tapestry/models/content/; ItemContentEncoder is
small on purpose so the two can be merged.
"""
from __future__ import annotations

import torch
from torch import nn

from tapestry.models.sequential.sasrec import SASRec, zero_padding_row

# State-dict entries that belong to one tenant (never transferred): its item ids and its items' token rows.
TENANT_KEYS = ("item_emb.weight", "item_attributes", "item_title_tokens", "side_emb")


class ItemContentEncoder(nn.Module):
    """Token rows -> one vector per item: mean attribute embedding + mean title-token embedding (index 0 = padding;
    an item without tokens gets zeros)."""

    def __init__(self, num_attributes: int, title_buckets: int, dim: int):
        super().__init__()
        self.attributes = nn.EmbeddingBag(num_attributes, dim, mode="mean", padding_idx=0)
        self.title = nn.EmbeddingBag(title_buckets + 1, dim, mode="mean", padding_idx=0)
        # The scale of SASRec's xavier-initialised id rows (~0.02 for thousands of items), not N(0, 1): summed with
        # positions after the sqrt(D) scaling, unit-variance content would drown them.
        for table in (self.attributes, self.title):
            nn.init.normal_(table.weight, std=0.02)
            with torch.no_grad():
                table.weight[0].zero_()

    def forward(self, attribute_rows: torch.Tensor, title_rows: torch.Tensor) -> torch.Tensor:
        """[N, A] and [N, T] token ids -> [N, D]."""
        return self.attributes(attribute_rows) + self.title(title_rows)


class ContentSASRec(SASRec):
    def __init__(self, num_items: int, num_attributes: int, title_buckets: int, attribute_width: int = 8,
                 title_width: int = 12, hidden_dim: int = 64, num_blocks: int = 2, num_heads: int = 1,
                 max_len: int = 100, dropout: float = 0.2):
        super().__init__(num_items, hidden_dim, num_blocks, num_heads, max_len, dropout)
        self.init_args = dict(num_items=num_items, num_attributes=num_attributes, title_buckets=title_buckets,
                              attribute_width=attribute_width, title_width=title_width, hidden_dim=hidden_dim,
                              num_blocks=num_blocks, num_heads=num_heads, max_len=max_len, dropout=dropout)
        self.content = ItemContentEncoder(num_attributes, title_buckets, hidden_dim)
        self.register_buffer("item_attributes", torch.zeros(num_items, attribute_width, dtype=torch.long))
        self.register_buffer("item_title_tokens", torch.zeros(num_items, title_width, dtype=torch.long))
        with torch.no_grad():
            self.item_emb.weight.zero_()     # ids start neutral: content decides until events say otherwise

    def set_item_tokens(self, attributes: torch.Tensor, title_tokens: torch.Tensor) -> None:
        """Install the tenant's item token rows (row = item index; row 0, padding, must be all zeros)."""
        for name, value in (("item_attributes", attributes), ("item_title_tokens", title_tokens)):
            target = getattr(self, name)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            if bool((value[0] != 0).any()):
                raise ValueError(f"{name}: row 0 is the padding item and must hold no tokens")
            target.copy_(value.to(target))

    def item_table(self) -> torch.Tensor:
        content = self.content(self.item_attributes, self.item_title_tokens)
        return zero_padding_row(self.item_emb.weight + content)

    def item_rows(self, seqs: torch.Tensor) -> torch.Tensor:
        b, length = seqs.shape
        flat = seqs.reshape(-1)
        content = self.content(self.item_attributes[flat], self.item_title_tokens[flat]).reshape(b, length, -1)
        rows = self.item_emb(seqs) + content
        return rows * (seqs > 0).unsqueeze(-1).to(rows.dtype)


def shared_state(model: ContentSASRec) -> dict[str, torch.Tensor]:
    """The transferable part of the state dict (everything but TENANT_KEYS), detached CPU copies."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in TENANT_KEYS}


def load_shared_state(model: ContentSASRec, shared: dict[str, torch.Tensor], complete: bool = True) -> None:
    """Copy a global model's shared part into `model`; its tenant part is kept. Shapes must agree (same dims, same
    attribute vocabulary and title buckets), and nothing outside the shared part may be given. `complete=False`
    accepts a subset (e.g. the content tables alone; the rest keeps `model`'s own initialisation)."""
    stray = sorted(set(shared) & set(TENANT_KEYS))
    if stray:
        raise ValueError(f"shared state carries tenant entries {stray}: item ids never transfer")
    expected = set(model.state_dict()) - set(TENANT_KEYS)
    missing, extra = sorted(expected - set(shared)), sorted(set(shared) - expected)
    if (missing and complete) or extra:
        raise ValueError(f"shared state does not fit this model: missing {missing}, unexpected {extra}")
    model.load_state_dict(shared, strict=False)
