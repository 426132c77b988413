"""Losses shared by the retrieval models (pairwise BPR, sampled softmax)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, params: torch.Tensor | None = None,
             lambda_reg: float = 0.0) -> torch.Tensor:
    """-mean log sigmoid(pos - neg) + lambda_reg * ||params||^2 / batch (LightGCN's L2 on the batch's e^(0))."""
    loss = -F.logsigmoid(pos - neg).mean()
    if params is not None and lambda_reg:
        loss = loss + lambda_reg * params.pow(2).sum() / pos.shape[0]
    return loss


def sampled_softmax_loss(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                         temperature: float = 0.1) -> torch.Tensor:
    """Softmax over (own positive + shared negatives) on cosine similarity / temperature.

    query, positive [B, D]; negatives [N, D], shared by the whole batch (one [B, N] product, cheap on CPU).
    Cosine with a low temperature (the SSM / SimpleX recipe) converges in a few epochs where BPR with one
    negative needs hundreds. A negative that happens to be the positive is left in: with N << catalogue size
    the bias is negligible and masking it costs a gather per row.
    """
    q = F.normalize(query, dim=-1)
    pos = (q * F.normalize(positive, dim=-1)).sum(-1, keepdim=True)           # [B, 1]
    neg = q @ F.normalize(negatives, dim=-1).T                                 # [B, N]
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
