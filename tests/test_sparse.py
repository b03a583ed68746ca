"""The sparse regime: the generator's sparse knobs, the seeded reduction of a log, rare ids shrunk towards their
categories, and both sparse experiments end to end (shrunk)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import FAST_TRAIN, compose_config, needs_ml100k
from twotower.artifacts import load_model
from twotower.data.encode import encode_log
from twotower.data.reduce import floor_time, reduce_log, reduced, stretch_rows
from twotower.data.schema import ITEM, TIME, USER, RawLog
from twotower.data.splits import leave_last_out
from twotower.data.stats import log_stats
from twotower.data.synthetic import generate
from twotower.model import ModelConfig, TwoTower
from twotower.train import train

DAY = 86400.0
SPARSE = {"n_users": 300, "n_items": 120, "n_categories": 6, "length_dist": "uniform", "min_events": 2,
          "max_events": 6, "time_granularity_s": DAY}  # fmt: skip


def per_user_lengths(events: pd.DataFrame) -> pd.Series:
    return events.groupby(USER, sort=False).size()


def test_sparse_generator_lengths_days_and_seed():
    raw = generate(**SPARSE, seed=5)
    lengths = per_user_lengths(raw.events)
    assert len(lengths) == 300 and lengths.between(2, 6).all() and set(lengths) == {2, 3, 4, 5, 6}
    assert (raw.events[TIME] % DAY == 0).all()
    # each user's rows stay together and in time order (same-day rows in a random order)
    assert (raw.events.groupby(USER, sort=False)[TIME].diff().dropna() >= 0).all()
    assert raw.events[USER].ne(raw.events[USER].shift()).sum() == 300
    again = generate(**SPARSE, seed=5)
    pd.testing.assert_frame_equal(raw.events, again.events)
    assert not generate(**SPARSE, seed=6).events.equals(raw.events)


def test_sparse_generator_leaves_the_default_log_alone():
    """The sparse knobs off (their defaults) draw exactly what the generator drew before they existed."""
    plain = generate(n_users=50, n_items=40, n_categories=4, mean_events=10, seed=1)
    same = generate(n_users=50, n_items=40, n_categories=4, mean_events=10, seed=1, length_dist="geometric",
                    time_granularity_s=None)  # fmt: skip
    pd.testing.assert_frame_equal(plain.events, same.events)
    assert (plain.events[TIME] % DAY != 0).any() and plain.name == "synthetic"
    with pytest.raises(TypeError, match="unknown setting"):
        generate(n_user=5)


def dense_log(seed: int = 0) -> RawLog:
    """Users with 1 to 30 events at distinct second-level times, rows shuffled (file order is not time order)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        n = int(rng.integers(1, 31))
        times = 1_700_000_000 + np.sort(rng.choice(40 * 86400, size=n, replace=False))
        rows += [(f"u{u}", f"i{rng.integers(200)}", float(t)) for t in times]
    events = pd.DataFrame(rows, columns=[USER, ITEM, TIME]).sample(frac=1.0, random_state=seed)
    return RawLog(events=events.reset_index(drop=True), name="dense")


def test_stretches_are_contiguous_runs_of_three_to_six_events():
    raw = dense_log()
    users, ts = raw.events[USER].to_numpy(), raw.events[TIME].to_numpy()
    rows = stretch_rows(users, ts, 3, 6, seed=0)
    assert (np.diff(rows) > 0).all()  # sorted: the kept rows keep their file order
    kept = raw.events.iloc[rows]
    full = raw.events.groupby(USER)[TIME].apply(lambda t: np.sort(t.to_numpy()))
    for user, times in kept.groupby(USER)[TIME]:
        mine, every = np.sort(times.to_numpy()), full[user]
        assert min(3, len(every)) <= len(mine) <= 6
        start = int(np.searchsorted(every, mine[0]))
        assert np.array_equal(every[start : start + len(mine)], mine)  # contiguous in time order
    assert kept[USER].nunique() == raw.events[USER].nunique()
    lengths = per_user_lengths(kept)
    assert set(lengths[lengths.index.map(lambda u: len(full[u]) >= 6)]) == {3, 4, 5, 6}


def test_reduction_floors_time_and_is_seeded():
    raw = dense_log()
    a, b = reduce_log(dense_log(), seed=1), reduce_log(dense_log(), seed=1)
    pd.testing.assert_frame_equal(a.events, b.events)
    assert not reduce_log(dense_log(), seed=2).events.equals(a.events)
    assert (a.events[TIME] % DAY == 0).all() and a.events[TIME].isin(floor_time(raw.events[TIME], DAY)).all()
    assert "reduced" in a.report.notes[-1]
    untimed = reduce_log(dense_log(), time_granularity_s=None, seed=1)
    assert (untimed.events[TIME] % DAY != 0).any()
    assert reduced(lambda name: dense_log(), seed=1, name="x").events.equals(a.events)  # loader args pass on
    with pytest.raises(ValueError):
        stretch_rows(np.zeros(3), np.zeros(3), 4, 3)


def test_dropping_each_users_last_event_leaves_the_rest_in_place():
    """The nested split: each user's last event in the split's order (time, then file order) goes."""
    full = reduce_log(dense_log(), seed=1).events
    nested = reduce_log(dense_log(), seed=1, drop_last=1).events
    gone = full.merge(nested, how="left", indicator=True).query("_merge == 'left_only'")
    assert len(nested) == len(full) - full[USER].nunique() and gone[USER].is_unique
    latest = full.groupby(USER)[TIME].max()  # (users,) sorted by user
    assert np.array_equal(gone.set_index(USER)[TIME].sort_index().to_numpy(), latest.to_numpy())
    tied = RawLog(events=pd.DataFrame({USER: ["a"] * 3, ITEM: ["x", "y", "z"], TIME: [5.0, 5.0, 1.0]}))
    kept = reduce_log(tied, min_events=3, max_events=3, time_granularity_s=None, drop_last=1).events
    assert kept[ITEM].tolist() == ["x", "z"]  # of two tied last events, the later in the file goes


def test_log_stats_tell_a_sparse_tied_log_from_a_dense_one(tiny_data, tiny_split):
    sparse = encode_log(generate(**SPARSE, seed=5), min_events=3)
    stats = log_stats(sparse, leave_last_out(sparse))
    dense = log_stats(tiny_data, tiny_split)
    assert 3 <= stats["events_per_user_mean"] <= 6 < dense["events_per_user_mean"]
    assert stats["tied_consecutive_share"] > 0.2 > dense["tied_consecutive_share"]
    assert 0 < stats["test_target_tied_share"] <= 1 and 0 <= dense["rare_share"] <= stats["rare_share"] <= 1
    assert json.loads(json.dumps(stats)) == stats  # metrics.json-ready


def test_rare_ids_are_shrunk_towards_their_categories():
    config = ModelConfig(n_items=4, n_categories=3, max_categories=1, dim=8)
    net = TwoTower(config, torch.tensor([[0], [1], [2], [1], [2]]))
    counts = torch.tensor([0, 0, 1, 5, 100])
    net.item_tower.set_id_weights(counts, prior=5.0)
    assert net.item_tower.id_weight.tolist() == pytest.approx([0, 0, 1 / 6, 0.5, 100 / 105])
    with torch.no_grad():
        never_seen = net.item_tower(torch.tensor([1]))  # (1, D)
        assert torch.allclose(never_seen, net.item_tower.encode_categories(torch.tensor([[1]])))
    # weights saved before id_weight existed load as they were trained: every id at full weight
    old = {k: v for k, v in net.state_dict().items() if not k.endswith("id_weight")}
    fresh = TwoTower(config)
    fresh.load_state_dict(old)
    assert fresh.item_tower.id_weight.tolist() == [1.0] * 5


SPARSE_TRAIN = [*FAST_TRAIN, "logger=none", "rerank=none"]


def test_sparse_synthetic_experiment_runs(tmp_path):
    shrink = ["data.loader.n_users=400", "data.loader.n_items=100", "data.loader.n_categories=5"]
    result = train(compose_config(["experiment=sparse_synthetic", *shrink, *SPARSE_TRAIN], tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result["metrics"]))
    assert metrics["dataset"]["name"] == "sparse-synthetic"
    assert 2.9 < metrics["dataset"]["interactions"] / metrics["dataset"]["users"] < 6.0
    assert set(metrics["baselines"]) == {"popularity", "itemknn", "ease"}
    weights = load_model(tmp_path / "run" / "model.pt").item_tower.id_weight[1:]
    assert 0 <= weights.min() < weights.max() < 1  # the shipped model carries the rare-id shrinkage


@needs_ml100k
def test_ml100k_sparse_experiment_runs(tmp_path):
    metrics = train(compose_config(["experiment=ml100k_sparse", *SPARSE_TRAIN], tmp_path / "run"))["metrics"]
    assert metrics["dataset"]["name"] == "ml-100k-sparse" and metrics["dataset"]["users"] == 943
    assert 3 * 943 <= metrics["dataset"]["interactions"] <= 6 * 943
    assert metrics["test"]["queries"] == 943


@pytest.mark.slow
@needs_ml100k
def test_ml100k_sparse_meets_targets(tmp_path):
    """The issue's target on sparse ml-100k with the defaults: the model at least matches EASE."""
    torch.set_num_threads(2)
    cfg = compose_config(["experiment=ml100k_sparse", "trainer.enable_progress_bar=false"], tmp_path)
    metrics = train(cfg)["metrics"]
    ease = metrics["baselines"]["ease"]
    for key in ("recall@10", "ndcg@10"):
        assert metrics["test"][key] >= ease[key], (key, metrics["test"][key], ease[key])
