"""TwoTower module properties the serving side relies on: shapes, unit vectors, defined padding, encode == score,
rebuild from init_args."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tapestry.models.retrieval.two_tower import TwoTower
from tapestry.inference.padding import left_pad

NUM_ITEMS, DIM, MAX_LEN, ATTR_VOCAB, ATTRS, USER_ATTRS = 40, 16, 12, 7, 3, 5


def _make(num_user_attrs: int = 0) -> TwoTower:
    torch.manual_seed(0)
    m = TwoTower(NUM_ITEMS, DIM, MAX_LEN, ATTR_VOCAB, ATTRS, num_user_attrs, hidden_dim=24, dropout=0.3,
                 temperature=0.1)
    attrs = torch.randint(0, ATTR_VOCAB, (NUM_ITEMS, ATTRS))
    attrs[0] = 0
    m.set_item_attrs(attrs)
    # The attention query and recency bias start at zero (= plain mean); perturb them so the tests see both paths.
    with torch.no_grad():
        m.attn_query.add_(torch.randn(DIM))
        m.recency.add_(torch.randn(MAX_LEN))
    return m.eval()


@pytest.fixture
def model() -> TwoTower:
    return _make()


@pytest.fixture
def attr_model() -> TwoTower:
    return _make(USER_ATTRS)


def _seqs(n: int = 4, width: int = MAX_LEN) -> torch.Tensor:
    rng = np.random.default_rng(1)
    hist = [rng.integers(1, NUM_ITEMS, size=rng.integers(1, 20)) for _ in range(n)]
    return torch.from_numpy(left_pad(hist, MAX_LEN, width))


def test_shapes_and_unit_norms(model):
    items = model.item_embeddings()
    users = model.encode(_seqs())
    assert items.shape == (NUM_ITEMS, DIM) and users.shape == (4, DIM)
    torch.testing.assert_close(items[1:].norm(dim=1), torch.ones(NUM_ITEMS - 1))
    torch.testing.assert_close(users.norm(dim=1), torch.ones(4))
    assert not items[0].any()                                       # padding row is zero


def test_all_padding_row_is_zero_and_neighbours_unchanged(model):
    seqs = _seqs(3)
    padded = torch.cat([torch.zeros(1, MAX_LEN, dtype=torch.long), seqs])
    out = model.encode(padded)
    assert torch.isfinite(out).all() and not out[0].any()
    torch.testing.assert_close(out[1:], model.encode(seqs))


def test_padding_width_and_truncation_do_not_change_the_vector(model):
    history = [np.array([5, 9, 3, 17, 2])]
    narrow = torch.from_numpy(left_pad(history, MAX_LEN))                    # [1, 5]
    wide = torch.from_numpy(left_pad(history, MAX_LEN, width=MAX_LEN))       # [1, 12]
    torch.testing.assert_close(model.encode(narrow), model.encode(wide))
    long = torch.arange(1, 30).unsqueeze(0)                                  # wider than max_len: newest kept
    torch.testing.assert_close(model.encode(long), model.encode(long[:, -MAX_LEN:]))


def test_recency_and_order_matter(model):
    a = torch.tensor([[3, 7, 11, 19]])
    assert not torch.allclose(model.encode(a), model.encode(a.flip(1)))     # same items, other order


def _numpy_two_tower_scores(m: TwoTower, seqs: torch.Tensor) -> np.ndarray:
    """The towers as the module docstring describes them, one item and one user at a time in float64 numpy:
    item = unit(MLP([id embedding, mean of its attribute embeddings])); user = unit(MLP([mean of the history's ID
    embeddings, attention pooling with weight softmax(<h, query> / sqrt(D) + recency[position from the right])]));
    score = <user, item>. Padding (0) is no item; a row without items is the zero vector."""
    w = {k: v.detach().double().numpy() for k, v in m.state_dict().items()}
    attrs = m.item_attrs.numpy()

    def mlp(prefix, x):
        hidden = np.maximum(w[f"{prefix}.0.weight"] @ x + w[f"{prefix}.0.bias"], 0.0)
        return w[f"{prefix}.2.weight"] @ hidden + w[f"{prefix}.2.bias"]

    def unit(x):
        return x / max(np.linalg.norm(x), 1e-12)

    items = np.zeros((NUM_ITEMS, DIM))
    for i in range(1, NUM_ITEMS):
        values = [a for a in attrs[i] if a > 0]
        attr_mean = w["attr_emb.weight"][values].mean(axis=0) if values else np.zeros(DIM)
        items[i] = unit(mlp("item_mlp", np.concatenate([w["item_emb.weight"][i], attr_mean])))
    users = np.zeros((len(seqs), DIM))
    for row, seq in enumerate(seqs.numpy()):
        seq = seq[-MAX_LEN:]
        positions = [MAX_LEN - len(seq) + j for j, item in enumerate(seq) if item > 0]
        history = [item for item in seq if item > 0]
        if not history:
            continue
        h = w["item_emb.weight"][history]                                   # [n, D]
        att = h @ w["attn_query"] / np.sqrt(DIM) + w["recency"][positions]
        weights = np.exp(att - att.max())
        weights /= weights.sum()
        users[row] = unit(mlp("user_mlp", np.concatenate([h.mean(axis=0), weights @ h])))
    return users @ items.T


def test_score_equals_an_independent_numpy_two_tower(model):
    seqs = _seqs(6)
    seqs[1] = 0                                                          # an all-padding row: every score 0
    seqs[2, :-1] = 0                                                     # one item
    scores = model.score(seqs)
    assert scores.shape == (6, NUM_ITEMS)
    expected = _numpy_two_tower_scores(model, seqs)
    assert not expected[1].any() and not expected[:, 0].any()
    np.testing.assert_allclose(scores.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)
    # The training logits are the same cosines over the temperature (0.1 here).
    np.testing.assert_allclose(model.logits(model.encode(seqs), model.item_embeddings()).detach().double().numpy(),
                               expected / 0.1, rtol=1e-5, atol=1e-5)


def test_item_attributes_shape_the_item_vectors(model):
    before = model.item_embeddings()
    attrs = model.item_attrs.clone()
    attrs[5] = torch.tensor([1, 2, 0]) if attrs[5].tolist() != [1, 2, 0] else torch.tensor([3, 0, 0])
    model.set_item_attrs(attrs)
    after = model.item_embeddings()
    assert not torch.allclose(before[5], after[5])
    torch.testing.assert_close(before[6:], after[6:])
    with pytest.raises(ValueError, match="shape"):
        model.set_item_attrs(torch.zeros(NUM_ITEMS, ATTRS + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="indices"):
        model.set_item_attrs(torch.full((NUM_ITEMS, ATTRS), ATTR_VOCAB, dtype=torch.long))


def test_user_attributes_are_optional_and_used(attr_model):
    seqs = _seqs(2)
    attrs = torch.zeros(2, USER_ATTRS)
    attrs[:, 1] = 1.0
    plain = attr_model.encode(seqs)                                         # the serving contract: encode(seqs)
    torch.testing.assert_close(plain, attr_model.encode(seqs, torch.zeros(2, USER_ATTRS)))
    assert not torch.allclose(plain, attr_model.encode(seqs, attrs))
    # A cold user with attributes but no history still gets a unit vector; with neither, zeros.
    empty = torch.zeros(2, 3, dtype=torch.long)
    cold = attr_model.encode(empty, torch.stack([attrs[0], torch.zeros(USER_ATTRS)]))
    torch.testing.assert_close(cold[0].norm(), torch.tensor(1.0))
    assert not cold[1].any()


@pytest.mark.parametrize("num_user_attrs", [0, USER_ATTRS])
def test_rebuild_from_init_args(num_user_attrs):
    m = _make(num_user_attrs)
    again = type(m)(**m.init_args)
    again.load_state_dict(m.state_dict())
    again.eval()
    seqs = _seqs()
    ua = torch.ones(4, num_user_attrs) if num_user_attrs else None
    assert torch.equal(again.item_embeddings(), m.item_embeddings())
    assert torch.equal(again.encode(seqs, ua), m.encode(seqs, ua))
    assert again.num_items == NUM_ITEMS and again.max_len == MAX_LEN


def test_all_padding_rows_give_finite_gradients_in_training(model):
    model.train()
    seqs = _seqs(3)
    seqs[0] = 0
    out = model.encode(seqs)
    (out @ model.item_vectors(torch.tensor([1, 2, 3])).T).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert model.recency.grad.abs().sum() > 0 and model.attn_query.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("num_user_attrs", [0, USER_ATTRS])
def test_torchscript_matches_eager(num_user_attrs):
    m = _make(num_user_attrs)
    scripted = torch.jit.script(m)
    seqs = _seqs()
    seqs[0] = 0
    torch.testing.assert_close(scripted.encode(seqs), m.encode(seqs))
    torch.testing.assert_close(scripted.item_embeddings(), m.item_embeddings())
