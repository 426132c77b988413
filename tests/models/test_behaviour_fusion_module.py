"""Behaviour-aware fusion reranker module: history event types change logits only when they differ, padding masked."""
from __future__ import annotations

import pytest
import torch

from tapestry.models.ranking.behaviour_fusion import BehaviourFusionRanker
from tapestry.models.ranking.fusion import FusionRanker

from .test_fusion_module import inputs

TYPES = 3
ARGS = dict(dim=8, num_heads=2, max_history=10, num_attr_values=4, attr_width=2, num_user_attrs=3, num_dense=4,
            mlp=(16,), dropout=0.3)


@pytest.fixture
def model() -> BehaviourFusionRanker:
    torch.manual_seed(0)
    m = BehaviourFusionRanker(30, TYPES, **ARGS)
    attrs = torch.randint(0, 5, (30, 2))
    attrs[0] = 0
    m.set_item_tables(torch.randn(30, 8), attrs)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not p.abs().sum():
                p.normal_(0, 0.3)
        m.event_emb.weight.normal_(0, 0.5)
        m.event_emb.weight[0].zero_()
    return m.eval()


def types_like(history: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, TYPES + 1, history.shape, generator=g) * (history > 0)


def test_types_change_logits_only_when_they_differ(model):
    cands, dense, history, attrs = inputs()
    types = types_like(history)
    base = model(cands, dense, history, attrs, types)
    torch.testing.assert_close(base, model(cands, dense, history, attrs, types.clone()))
    changed = types.clone()
    changed[1, -1] = changed[1, -1] % TYPES + 1                     # user 1's newest event, another type
    out = model(cands, dense, history, attrs, changed)
    torch.testing.assert_close(out[[0, 2]], base[[0, 2]])           # other users' lists unchanged
    assert not torch.allclose(out[1], base[1])


def test_padding_types_are_masked_and_unknown_types_equal_the_plain_ranker(model):
    cands, dense, history, attrs = inputs()
    types = types_like(history)
    garbage = types + (history == 0) * 2                             # types under padding slots
    torch.testing.assert_close(model(cands, dense, history, attrs, types),
                               model(cands, dense, history, attrs, garbage))
    plain = FusionRanker(30, **ARGS).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("event_emb")})
    expected = plain(cands, dense, history, attrs)
    torch.testing.assert_close(model(cands, dense, history, attrs), expected)
    torch.testing.assert_close(model(cands, dense, history, attrs, torch.full_like(history, 99)), expected)


def test_state_dict_round_trip(model):
    cands, dense, history, attrs = inputs()
    types = types_like(history)
    twin = BehaviourFusionRanker(30, TYPES, **ARGS).eval()
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin(cands, dense, history, attrs, types), model(cands, dense, history, attrs, types))
    with pytest.raises(ValueError, match="history_types has shape"):
        model(cands, dense, history, attrs, types[:, 1:])
