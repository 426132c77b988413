"""The fusion-transformer module alone: shapes, padding masked, candidates scored independently, the loss."""
from __future__ import annotations

import torch

from tapestry.models.ranking.fusion import FusionRanker, listwise_loss

B, N, L, F = 3, 7, 6, 4


def make(graph_dim: int = 5) -> FusionRanker:
    torch.manual_seed(0)
    m = FusionRanker(num_items=30, dim=8, num_heads=2, max_history=10, num_attr_values=4, attr_width=2,
                     graph_dim=graph_dim, num_user_attrs=3, num_dense=F, mlp=(16,), dropout=0.3)
    attrs = torch.randint(0, 5, (30, 2))
    attrs[0] = 0
    m.set_item_tables(torch.randn(30, 8), attrs, torch.randn(30, graph_dim) if graph_dim else None)
    # Non-zero weights everywhere (the graph projection and the wide term start at zero).
    with torch.no_grad():
        for p in m.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.3)
    return m.eval()


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cands = torch.randint(1, 30, (B, N), generator=g)
    cands[1, 5:] = 0                                            # a shorter list
    dense = torch.randn(B, N, F, generator=g)
    history = torch.randint(1, 30, (B, L), generator=g)
    history[0, :2] = 0                                          # left padding
    history[2] = 0                                              # no history at all
    attrs = torch.tensor([[1, 2], [3, 0], [0, 0]])
    return cands, dense, history, attrs


def test_shapes_and_finite_scores_even_without_history():
    m = make()
    out = m(*inputs())
    assert out.shape == (B, N)
    assert torch.isfinite(out).all()


def test_padded_history_slots_do_not_change_scores():
    m = make()
    cands, dense, history, attrs = inputs()
    base = m(cands, dense, history, attrs)
    wider = torch.cat([torch.zeros(B, 3, dtype=torch.long), history], 1)      # more left padding
    torch.testing.assert_close(m(cands, dense, wider, attrs), base)
    with torch.no_grad():                                                      # what a padded slot would read
        m.item_emb.weight[0].normal_()
        m.graph[0].normal_()
        m.attr_emb.weight[0].normal_()                                          # the attribute padding id
        m.user_attr_emb.weight[0].normal_()
    after = m(cands, dense, history, attrs)
    torch.testing.assert_close(after[0], base[0])
    torch.testing.assert_close(after[1, :5], base[1, :5])                     # its real candidates
    torch.testing.assert_close(after[2], base[2])                             # an empty history: no slot read
    with torch.no_grad():
        m.recency.weight[L - 2:].normal_()             # the recency of row 0's two padded (oldest) slots
    after = m(cands, dense, history, attrs)
    torch.testing.assert_close(after[0], base[0])
    torch.testing.assert_close(after[2], base[2])


def test_history_beyond_max_history_is_ignored():
    m = make()
    cands, dense, history, attrs = inputs()
    longer = torch.cat([torch.randint(1, 30, (B, 12)), history], 1)            # 18 columns, max_history = 10
    same_tail = torch.cat([torch.randint(1, 30, (B, 12)), history], 1)
    same_tail[:, -10:] = longer[:, -10:]
    torch.testing.assert_close(m(cands, dense, longer, attrs), m(cands, dense, same_tail, attrs))


def test_history_matters():
    m = make()
    cands, dense, history, attrs = inputs()
    other = history.clone()
    other[0, -1] = (other[0, -1] % 29) + 1
    assert not torch.allclose(m(cands, dense, other, attrs)[0], m(cands, dense, history, attrs)[0])


def test_a_candidates_score_does_not_depend_on_the_other_candidates():
    m = make()
    cands, dense, history, attrs = inputs()
    base = m(cands, dense, history, attrs)
    perm = torch.randperm(N)
    torch.testing.assert_close(m(cands[:, perm], dense[:, perm], history, attrs), base[:, perm])
    # Each candidate alone (a list of one) scores as it did in its list.
    for j in (0, 3, 6):
        torch.testing.assert_close(m(cands[:, j:j + 1], dense[:, j:j + 1], history, attrs)[:, 0], base[:, j])
    # Replacing the others changes nothing for candidate 2.
    other_c, other_d = torch.randint(1, 30, (B, N)), torch.randn(B, N, F)
    other_c[:, 2], other_d[:, 2] = cands[:, 2], dense[:, 2]
    torch.testing.assert_close(m(other_c, other_d, history, attrs)[:, 2], base[:, 2])


def test_lists_are_scored_independently_of_their_batch():
    m = make()
    cands, dense, history, attrs = inputs()
    base = m(cands, dense, history, attrs)
    # Row 0 alone, without its history's padding columns; row 1 alone, its attribute padding dropped.
    torch.testing.assert_close(m(cands[:1], dense[:1], history[:1, 2:], attrs[:1])[0], base[0])
    torch.testing.assert_close(m(cands[1:2], dense[1:2], history[1:2], attrs[1:2, :1])[0], base[1])


def test_without_graph_vectors_or_attributes():
    m = FusionRanker(num_items=30, dim=8, num_heads=1, max_history=4, num_dense=F).eval()
    out = m(*inputs()[:3], torch.zeros(B, 0, dtype=torch.long))
    assert out.shape == (B, N) and torch.isfinite(out).all()


def test_listwise_loss_is_cross_entropy_over_real_candidates():
    logits = torch.tensor([[2.0, 0.5, 9.0], [1.0, 3.0, -1.0]])
    cands = torch.tensor([[4, 5, 0], [1, 2, 3]])                 # list 0: last column is padding
    loss = listwise_loss(logits, cands, torch.tensor([1, 0]))
    expected = (torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.5]]), torch.tensor([1]))
                + torch.nn.functional.cross_entropy(logits[1:], torch.tensor([0]))) / 2
    torch.testing.assert_close(loss, expected)


def test_ignored_candidates_are_neither_target_nor_negative():
    logits = torch.tensor([[2.0, 0.5, 9.0, 1.0]])
    cands = torch.tensor([[4, 5, 6, 7]])
    ignore = torch.tensor([[False, False, True, False]])
    loss = listwise_loss(logits, cands, torch.tensor([1]), ignore)
    expected = torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.5, 1.0]]), torch.tensor([1]))
    torch.testing.assert_close(loss, expected)


def test_gradients_reach_every_trainable_table():
    m = make().train()
    cands, dense, history, attrs = inputs()
    listwise_loss(m(cands, dense, history, attrs), cands, torch.tensor([0, 1, 2])).backward()
    for name in ("item_emb.weight", "attr_emb.weight", "graph_proj.weight", "recency.weight", "user_attr_emb.weight",
                 "q.weight", "wide.weight"):
        assert dict(m.named_parameters())[name].grad.abs().sum() > 0, name
