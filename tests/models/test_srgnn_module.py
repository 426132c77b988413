"""SR-GNN module: the batched session graph, agreement with a per-session (reference-style) computation, padding,
the frozen item table and the serving contract's rebuild from init_args."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.inference.padding import left_pad
from tapestry.models.session.srgnn import SRGNN, session_graph

from .encoder_contract import EncoderContract

NUM_ITEMS, DIM, MAX_LEN = 30, 8, 10


def _model(frozen: bool = False, num_steps: int = 1) -> SRGNN:
    torch.manual_seed(0)
    m = SRGNN(NUM_ITEMS, DIM, num_steps=num_steps, max_len=MAX_LEN, frozen_item_table=frozen)
    if frozen:
        m.set_item_table(torch.randn(NUM_ITEMS, DIM))
    return m.eval()


def test_graph_of_a_session_with_a_repeated_item():
    # clicks 3 -> 5 -> 3 -> 7, left-padded by two: edges 3->5, 5->3, 3->7 between first occurrences (2, 3, 5).
    alias, active, a_in, a_out = session_graph(torch.tensor([[0, 0, 3, 5, 3, 7]]))
    assert alias[0].tolist()[2:] == [2, 3, 2, 5]
    assert active[0].tolist() == [False, False, True, True, False, True]
    expected_in = torch.zeros(6, 6)
    expected_in[3, 2] = 1.0        # 5 is entered from 3 only
    expected_in[2, 3] = 1.0        # 3 is entered from 5 only (its first click has no predecessor)
    expected_in[5, 2] = 1.0        # 7 is entered from 3
    expected_out = torch.zeros(6, 6)
    expected_out[2, 3] = expected_out[2, 5] = 0.5     # 3 leaves to 5 and to 7: out-degree 2
    expected_out[3, 2] = 1.0
    torch.testing.assert_close(a_in[0], expected_in, rtol=0, atol=0)
    torch.testing.assert_close(a_out[0], expected_out, rtol=0, atol=0)


def test_a_repeated_transition_is_one_edge():
    # 4 -> 6 twice: still weight 1 after normalisation (the reference sets u_A[u][v] = 1).
    _, _, a_in, a_out = session_graph(torch.tensor([[4, 6, 4, 6]]))
    assert a_out[0, 0, 1] == 1.0 and a_in[0, 1, 0] == 1.0
    assert a_out[0, 1, 0] == 1.0 and a_out[0].sum() == 2.0


def _reference_encode(m: SRGNN, session: list[int]) -> torch.Tensor:
    """One session the reference way: nodes = np.unique (sorted ids), dense loops, no padding at all."""
    nodes = np.unique(session)
    n = len(nodes)
    adj = np.zeros((n, n))
    for u, v in zip(session[:-1], session[1:]):
        adj[np.searchsorted(nodes, u), np.searchsorted(nodes, v)] = 1.0
    a_in = torch.tensor((adj / np.maximum(adj.sum(0), 1)).T, dtype=torch.float32)
    a_out = torch.tensor(adj / np.maximum(adj.sum(1, keepdims=True), 1), dtype=torch.float32)
    h = m.item_embeddings()[torch.as_tensor(nodes)].unsqueeze(0)
    for _ in range(m.num_steps):
        h = m._propagate(h, a_in.unsqueeze(0), a_out.unsqueeze(0))
    click = h[0, torch.as_tensor(np.searchsorted(nodes, session))]                 # [len, D]
    last = click[-1]
    alpha = m.att_q(torch.sigmoid(m.att_last(last) + m.att_node(click)))
    return m.transform(torch.cat([last, (alpha * click).sum(0)]))


@pytest.mark.parametrize("num_steps", [1, 2])
def test_batched_encoder_matches_the_per_session_computation(num_steps):
    m = _model(num_steps=num_steps)
    sessions = [[5, 9, 5, 2], [7], [1, 2, 3, 4, 5, 6], [8, 8, 8], [11, 4, 11, 4, 12, 29]]
    batch = torch.from_numpy(left_pad([np.array(s) for s in sessions], MAX_LEN))
    with torch.no_grad():
        got = m.encode(batch)
        for row, session in enumerate(sessions):
            torch.testing.assert_close(got[row], _reference_encode(m, session), rtol=1e-5, atol=1e-6)


def test_only_the_last_max_len_clicks_count():
    m = _model()
    recent = np.arange(1, MAX_LEN + 1)
    with torch.no_grad():
        longer = m.encode(torch.from_numpy(left_pad([np.concatenate([[20, 21, 22], recent])], 100)))
        exact = m.encode(torch.from_numpy(left_pad([recent], MAX_LEN)))
    torch.testing.assert_close(longer, exact)


def test_all_padding_row_encodes_to_zeros_with_finite_gradients():
    m = _model().train()
    seqs = torch.zeros(2, 4, dtype=torch.long)
    seqs[1, -2:] = torch.tensor([3, 4])
    out = m.encode(seqs)
    assert torch.isfinite(out).all() and not out[0].any() and out[1].abs().sum() > 0
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_frozen_item_table_is_a_buffer_untouched_by_an_optimizer_step():
    m = _model(frozen=True).train()
    table = m.item_embeddings().clone()
    assert not table[0].any()                                   # padding row forced to zero
    assert "item_table" in dict(m.named_buffers())
    assert all(p.data_ptr() != m.item_table.data_ptr() for p in m.parameters())
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.Adam(m.parameters(), lr=0.1, weight_decay=1e-2)
    seqs = torch.tensor([[0, 3, 4, 3], [1, 2, 5, 6]])
    loss = torch.nn.functional.cross_entropy(m.scores(seqs)[:, 1:], torch.tensor([6, 8]))
    loss.backward()
    opt.step()
    assert torch.equal(m.item_embeddings(), table)
    assert not torch.equal(before["transform.weight"], m.transform.weight)       # the rest did train


def test_set_item_table_checks_the_shape_and_mode():
    with pytest.raises(ValueError, match="expected"):
        _model(frozen=True).set_item_table(torch.zeros(NUM_ITEMS, DIM + 1))
    with pytest.raises(RuntimeError, match="trainable"):
        _model(frozen=False).set_item_table(torch.zeros(NUM_ITEMS, DIM))


@pytest.mark.parametrize("frozen", [False, True])
def test_rebuild_from_init_args_and_state_dict(frozen):
    m = _model(frozen=frozen)
    twin = type(m)(**m.init_args)
    twin.load_state_dict(m.state_dict())
    twin.eval()
    seqs = torch.from_numpy(left_pad([np.array([4, 2, 4]), np.array([9])], MAX_LEN, width=6))
    with torch.no_grad():
        assert torch.equal(twin.encode(seqs), m.encode(seqs))
        assert torch.equal(twin.item_embeddings(), m.item_embeddings())
    assert (twin.num_items, twin.max_len) == (NUM_ITEMS, MAX_LEN)
    assert m.item_embeddings().shape == (NUM_ITEMS, DIM) and not m.item_embeddings()[0].any()


@pytest.mark.parametrize("frozen", [False, True])
class TestEncoderContract(EncoderContract):
    scriptable = False

    @pytest.fixture
    def encoder(self, frozen):
        return _model(frozen=frozen)
