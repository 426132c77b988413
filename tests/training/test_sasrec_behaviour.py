"""SASRec with behaviour=True (issue 19): the shared API, type alignment, the served module, and a planted case
where the next item depends on the event type."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tapestry.training.behaviour import BehaviourLog, event_vocabulary, type_sequences
from tapestry.training.data import InteractionData
from tapestry.training.sasrec import SASRecRecommender

from .recommender_mixin import RecommenderMixin
from .test_recommenders import SASREC


class TestSASRecBehaviour(RecommenderMixin):
    """The synthetic tenant has view / click / purchase events: three behaviours plus the auxiliary type head."""

    @classmethod
    def make(cls, data, graph):
        return SASRecRecommender(**SASREC, behaviour=True, behaviour_head=0.5, device=cls.device, progress=False)

    def test_vocabulary_is_the_training_event_types(self, model, data):
        assert model.event_types_ == sorted(data.train["event_type"].unique().to_list())
        assert len(model.event_types_) >= 2

    def test_type_sequences_align_with_item_sequences(self, data):
        vocab = event_vocabulary(data)
        items, types = type_sequences(data, ("train", "valid"), vocab)
        assert all(np.array_equal(a, b) for a, b in zip(items, data.sequences(("train", "valid"))))
        assert all(len(i) == len(t) and (t >= 1).all() for i, t in zip(items, types))

    def test_served_module_carries_the_vocabulary_and_reads_types(self, model, data):
        import torch

        from tapestry.inference.encoders import event_vocabulary

        module = model.serving_module()
        assert event_vocabulary(module) == model.event_types_
        history = data.sequences(("train",))[1][-5:]
        types = model.behaviour_log_.types_for(1, data.sequences(("train",))[1])[-5:]
        with torch.no_grad():
            served = module.encode(torch.from_numpy(history[None]), torch.from_numpy(types[None]))
        torch.testing.assert_close(served.cpu(), model.encode_behaviour([history], [types]).cpu())


def test_log_gives_unknown_types_to_a_history_it_did_not_see():
    log = BehaviourLog([np.array([4, 5, 6])], [np.array([1, 2, 1])])
    assert log.types_for(0, np.array([4, 5])).tolist() == [1, 2]
    assert log.types_for(0, np.array([5, 4])).tolist() == [0, 0]        # not a prefix: unknown, not borrowed
    assert log.types_for(7, np.array([4])).tolist() == [0]              # unknown user


CUES, PAIRS, USERS = 5, 8, 160


def planted_data(seed: int = 0) -> InteractionData:
    """Cue item c (1..5) as a "like" is followed by item 5 + c, as a "view" by item 10 + c: only the type tells
    which. The train split ends on a cue; the test split holds its follower."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "test": []}
    for u in range(1, USERS + 1):
        t = 0
        for pair in range(PAIRS + 1):
            c, liked = int(rng.integers(1, CUES + 1)), bool(rng.integers(0, 2))
            follower = CUES + c if liked else 2 * CUES + c
            rows["train"].append((u, c, "like" if liked else "view", t))
            rows["test" if pair == PAIRS else "train"].append((u, follower, "view", t + 1))
            t += 2
    frame = lambda r: pl.DataFrame(r, schema=["user_idx", "item_idx", "event_type", "timestamp"],  # noqa: E731
                                   orient="row").with_columns(pl.lit(1.0).alias("weight"),
                                                              pl.lit(None, pl.String).alias("session_id"))
    empty = frame(rows["test"]).head(0)
    return InteractionData(Path("."), USERS + 1, 3 * CUES + 1, frame(rows["train"]), empty, frame(rows["test"]),
                           pl.DataFrame(), pl.DataFrame(), pl.DataFrame())


def test_planted_type_dependence_is_learned_only_with_behaviour():
    data = planted_data()
    users = data.test["user_idx"].to_numpy()
    targets = data.test["item_idx"].to_numpy()
    histories = data.sequences(("train",))
    accuracy = {}
    for behaviour in (False, True):
        cfg = {**SASREC, "epochs": 25, "patience": 0}
        model = SASRecRecommender(**cfg, behaviour=behaviour, device="cpu", progress=False).fit(data)
        top = model.score(users, [histories[u] for u in users]).argmax(1).numpy()
        accuracy[behaviour] = float((top == targets).mean())
    # Without types the best guess is one of two followers (~0.5); with them the follower is determined.
    assert accuracy[False] < 0.7
    assert accuracy[True] > accuracy[False] + 0.25, accuracy
