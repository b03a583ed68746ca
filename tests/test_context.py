"""Context and user features, and a bundle whose model reads every signal (queries, context, hour of the
week, user features): export parity, serving requests with searches, context and features, the features-only
start, bad input answered 422, stored searches through the live loop."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.core.bundle import Bundle
from serving.core.history import hour_of_week
from serving.core.signals import SignalError
from serving.historystore import seed_rows
from serving.live import LiveService
from serving.recommender import Recommender
from serving.settings import Settings
from serving.store import SQLiteHistoryStore
from tests.conftest import with_user_features
from twotower.artifacts import load_model
from twotower.data.movielens import age_bucket, zip_region
from twotower.export import input_names, onnx_parity


def test_hour_of_week_and_ml100k_feature_rules():
    monday = 1_700_438_400.0  # 2023-11-20 00:00 UTC, a Monday
    assert hour_of_week(np.array([monday, monday + 3600 * 25, monday - 1, np.nan])).tolist() == [
        0,
        25,
        167,
        -1,
    ]
    assert [age_bucket(a) for a in (7, 18, 24, 25, 56, "x")] == [
        "<18",
        "18-24",
        "18-24",
        "25-34",
        "56+",
        None,
    ]
    assert [zip_region(z) for z in ("85711", "T8H1N", "", None)] == ["8", "other", None, None]


def test_the_model_and_bundle_carry_every_signal(signal_bundle):
    run, bundle, manifest, _ = signal_bundle
    net = load_model(run / "model.pt")
    assert input_names(net.config) == (
        "items",
        "events",
        "dwell",
        "gaps",
        "queries",
        "context",
        "user_features",
    )
    assert net.config.context_sizes == (3, len(manifest["signals"]["context"]["hour_of_week"]))
    assert net.config.user_feature_sizes == (4, 3)  # <unknown> + values
    assert manifest["signals"]["user_features"]["segment"] == ["<unknown>", "a", "b", "c"]
    assert manifest["onnx_parity_max_abs"] <= 1e-5 and "users.parquet" in manifest["files"]
    for name, padded in (("user_tower.onnx", True), ("user_tower_unpadded.onnx", False)):
        assert onnx_parity(net, bundle / name, [], padded=padded) <= 1e-5
    assert Bundle.load(bundle).users is not None


def test_requests_with_searches_context_and_features(signal_bundle):
    rec = Recommender.load(signal_bundle[1])
    items = rec.item_ids[:3]
    plain = rec.recommend(history=items, k=5)
    search = rec.recommend(history=[*items, {"query": "topic1word2 name5"}], k=5)
    assert plain.source == search.source == "model" and search.history_length == 3
    a, b = (rec.resolve(h).history for h in (items, [*items, {"query": "topic1word2"}]))
    assert np.abs(rec.encode(a) - rec.encode(b)).max() > 1e-6  # the query moved the vector
    # the padded graph (batches) and the unpadded one (single requests) agree with every input
    hist = rec.signals.with_inputs(b, {"device": "mobile"})
    features = rec.signals.feature_row({"segment": "b"})
    np.testing.assert_allclose(rec.encode(hist, features=features),
                               rec.encode(hist, padded_graph=True, features=features), atol=1e-5)  # fmt: skip
    assert rec.recommend(history=items, context={"device": "tablet"}, k=3).source == "model"  # unknown value
    with pytest.raises(SignalError, match="context.weather"):
        rec.recommend(history=items, context={"weather": "rain"})
    with pytest.raises(SignalError, match="features.age"):
        rec.recommend(history=items, features={"age": "30"})


def test_a_user_with_features_alone_gets_a_personal_start(signal_bundle):
    rec = Recommender.load(signal_bundle[1])
    a = rec.recommend(features={"segment": "a", "country": "fr"}, k=5)
    b = rec.recommend(features={"segment": "c", "country": "de"}, k=5)
    assert a.source == b.source == "features" and len(a.items) == 5
    nothing = rec.recommend(k=5)
    assert nothing.source == "popularity"  # nothing known: the fallback stays
    empty = rec.resolve([]).history
    vector = rec.encode(empty, features=rec.signals.feature_row({"segment": "a", "country": "fr"}))
    net = load_model(signal_bundle[0] / "model.pt")
    import torch

    with torch.no_grad():
        ref = net.encode_user(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                              -torch.ones(1, 1), -torch.ones(1, 1), queries=torch.zeros(1, 1, 32, dtype=torch.long),
                              context=torch.zeros(1, 1, 2, dtype=torch.long),
                              user_features=torch.from_numpy(rec.signals.feature_row({"segment": "a", "country": "fr"}))[None])  # fmt: skip
    np.testing.assert_allclose(vector, ref[0].numpy(), atol=1e-5)


def test_http_searches_context_features_and_bad_input(signal_bundle, tmp_path):
    settings = Settings(bundle=str(signal_bundle[1]), state_dir=str(tmp_path / "state"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        items = client.get("/openapi.json") and Recommender.load(signal_bundle[1]).item_ids[:2]
        ok = client.post("/recommend", json={"history": [*items, {"query": "topic2word1"}], "k": 3,
                                             "context": {"device": "mobile"}, "features": {"segment": "a"}})  # fmt: skip
        assert ok.status_code == 200 and ok.json()["source"] == "model"
        start = client.post("/recommend", json={"features": {"segment": "a"}, "k": 3})
        assert start.status_code == 200 and start.json()["source"] == "features"
        for body, field in (({"history": [items[0], {"query": "  "}]}, "history[1].query"),
                            ({"history": items, "context": {"weather": "x"}}, "context.weather"),
                            ({"history": items, "features": {"age": "1"}}, "features.age")):  # fmt: skip
            bad = client.post("/recommend", json=body)
            assert bad.status_code == 422 and field in str(bad.json()["detail"]), body
        too_long = client.post("/recommend", json={"history": [items[0], {"query": "x" * 600}]})
        assert too_long.status_code == 422
        stored = client.post("/events", json={"events": [{"user_id": "new-1", "item_id": items[0]},
                                                          {"user_id": "new-1", "query": "topic1word1"}]})  # fmt: skip
        assert stored.status_code == 200, stored.text
        assert client.post("/events", json={"events": [{"user_id": "new-1"}]}).status_code == 422


def test_live_searches_are_stored_read_and_erased(signal_bundle, tmp_path):
    rec = Recommender.load(signal_bundle[1])
    store = SQLiteHistoryStore(tmp_path / "state", max_events=rec.max_len + 10)
    live = LiveService(rec, store)
    store.seed(seed_rows(rec), source="test")
    user = next(u for u, h in rec.histories.items() if h.queries is not None and h.queries.any())
    seeded = live.stored_history(user).history
    np.testing.assert_array_equal(seeded.queries, rec.histories[user].queries)  # the bundle's searches seeded
    item = rec.item_ids[0]
    now = time.time()
    live.ingest(
        [
            {"user_id": "s", "item_id": item, "ts": now - 2},
            {"user_id": "s", "query": "topic3word0", "ts": now - 1},
        ]
    )
    history = live.stored_history("s").history
    assert len(history) == 1 and history.queries[0].any()
    assert [e.get("query") for e in live.user_events("s")] == [None, "topic3word0"]
    assert live.erase("s") == 2 and live.stored_history("s") is None


def test_cold_start_reads_the_first_events_and_scores_the_held_out_target(
    signal_bundle, tiny_data, tiny_split
):
    from twotower.cold_start import cold_start
    from twotower.data.sequences import EvalQueries, SequenceArrays

    arrays = SequenceArrays.from_log(tiny_data)
    for n in (0, 1, 3):
        queries = EvalQueries(tiny_data, tiny_split, "test", arrays, max_len=20, first_events=n)
        batch = queries.collate([0, 1])
        first = tiny_data.user_offsets[queries.users[0]]
        assert batch["items"][0, :n].tolist() == tiny_data.items[first : first + n].tolist()
        assert not batch["items"][0, n:].any() and batch["targets"][0] == queries.targets[0]
        assert batch["exclude"][0].tolist()[:n] == tiny_data.items[first : first + n].tolist()
    out = cold_start({"features": signal_bundle[0]})
    assert set(out["cuts"]) == {"0", "1", "3"}
    for row in out["cuts"].values():
        assert (
            0 <= row["features"]["recall@10"] <= 1
            and row["features"]["queries"] == row["popularity"]["queries"]
        )


def test_start_targets_are_the_window_first_item_then_draws_from_the_users_training_events(
    tiny_data, tiny_split
):
    from twotower.data.sequences import SequenceArrays, TrainWindows

    data = with_user_features(tiny_data)
    arrays = SequenceArrays.from_log(data)
    one = TrainWindows(data, tiny_split, arrays, max_len=5, seed=0)
    windows = TrainWindows(data, tiny_split, arrays, max_len=5, seed=0, start_targets=6)
    picks = list(range(len(windows)))
    single, batch = one.collate([one[i] for i in picks]), windows.collate([windows[i] for i in picks])
    assert batch["start_targets"].shape == (len(picks), 6) == batch["start_weights"].shape
    assert batch["start_targets"][:, 0].tolist() == single["start_targets"].reshape(-1).tolist()
    drawn_other = 0
    for row, (begin, _end) in enumerate(windows.windows):
        u = int(data.users[begin])
        first, train_end = int(data.user_offsets[u]), int(tiny_split.train_end[u])
        assert batch["start_targets"][row, 0] == data.items[begin]  # the window's first input
        allowed = set(data.items[first:train_end].tolist())  # never a validation or test item
        assert set(batch["start_targets"][row, 1:].tolist()) <= allowed
        drawn_other += int((batch["start_targets"][row, 1:] != data.items[begin]).sum())
    assert drawn_other > len(picks)  # draws, not copies of the first item
    with pytest.raises(ValueError, match="start_targets"):
        TrainWindows(data, tiny_split, arrays, max_len=5, start_targets=0)


def test_each_start_target_is_scored_from_the_features_state_with_nothing_seen(tiny_data, tiny_split):
    """The module's loss equals a full softmax computed by hand: S rows per window from the start state (no
    item masked), then one row per event whose window items so far are masked unless they are the target."""
    import torch
    import torch.nn.functional as F

    from twotower.data.sequences import SequenceArrays, TrainWindows
    from twotower.lit_module import TwoTowerModule
    from twotower.losses import SoftmaxLoss
    from twotower.model import TwoTower, model_inputs
    from twotower.model_config import ModelConfig

    data = with_user_features(tiny_data)
    windows = TrainWindows(data, tiny_split, SequenceArrays.from_log(data), max_len=5, start_targets=3)
    batch = windows.collate([windows[i] for i in range(6)])
    torch.manual_seed(0)
    config = ModelConfig(n_items=data.n_items, n_events=data.n_events, dim=8, max_len=5, dropout=0.0,
                         normalize=False, user_feature_sizes=(4,))  # fmt: skip
    net = TwoTower(config).eval()
    module = TwoTowerModule(net, SoftmaxLoss(mode="full", mask_history=True), torch.optim.Adam)
    with torch.no_grad():
        got = module._shared_step(batch)
        states = net.user_states(**model_inputs(batch))  # (B, 1 + L, D)
        logits_all = states @ net.encode_items().T / net.temperature  # (B, 1 + L, N)
    losses, weights = [], []
    for b in range(len(batch["items"])):
        for s in range(3):  # the start state, nothing seen
            target = int(batch["start_targets"][b, s])
            losses.append(F.cross_entropy(logits_all[b, 0], torch.tensor(target - 1)))
            weights.append(float(batch["start_weights"][b, s]))
        for p in range(batch["targets"].shape[1]):
            target = int(batch["targets"][b, p])
            if target == 0:
                continue
            row = logits_all[b, 1 + p].clone()
            for seen in set(batch["items"][b, : p + 1].tolist()) - {0, target}:
                row[seen - 1] = torch.finfo(row.dtype).min
            losses.append(F.cross_entropy(row, torch.tensor(target - 1)))
            weights.append(float(batch["weights"][b, p]))
    w = torch.tensor(weights)
    torch.testing.assert_close(got, (torch.stack(losses) * w).sum() / w.sum())


def test_audiences_read_each_users_features_by_raw_or_keyed_id(signal_bundle, tmp_path):
    """Users are encoded for audiences as batch scoring encodes them: with their stored features (a model
    that reads them), looked up by raw id offline and by keyed id over a pseudonymised store."""
    from serving.audience import UserIndex
    from serving.audience_live import KeyedFeatures, build_from_store
    from serving.batch import BatchScorer

    rec = Recommender.load(signal_bundle[1])
    users = sorted(rec.histories)[:40]
    histories = [rec.histories[u] for u in users]
    index = UserIndex.build(rec, users, histories)
    want = BatchScorer(rec).encode(histories, features=[rec.user_features.get(u) for u in users])
    np.testing.assert_allclose(index.vectors, want, atol=1e-6)
    blind = BatchScorer(rec).encode(histories)  # every feature "unknown"
    assert np.abs(index.vectors - blind).max() > 1e-4  # the features moved the vectors
    store = SQLiteHistoryStore(tmp_path / "state", max_events=rec.max_len + 10)
    live = LiveService(rec, store, pseudonym_key=b"k" * 32)
    now = time.time()
    live.ingest(
        [{"user_id": u, "item_id": rec.item_ids[i % 5], "ts": now - 60 + i} for i, u in enumerate(users)]
    )
    kept = KeyedFeatures()
    keyed = build_from_store(live, kept)
    assert set(keyed.user_ids) == {live.user_key(u) for u in users}  # the store names keyed ids only
    fresh = [live.stored_history(u).history for u in users]
    want = BatchScorer(rec).encode(fresh, features=[rec.user_features.get(u) for u in users])
    got = keyed.vectors[[keyed.position[live.user_key(u)] for u in users]]
    np.testing.assert_allclose(got, want, atol=1e-6)
    keyings = []
    live.user_key = lambda u: keyings.append(u) or LiveService.user_key(live, u)  # counts the HMACs
    rebuilt = build_from_store(live, kept)  # a rebuild for the same bundle keys no feature again
    assert keyings == [] and rebuilt.features is keyed.features
    np.testing.assert_allclose(rebuilt.vectors, keyed.vectors, atol=1e-6)
    live.reload(signal_bundle[1])  # another recommender: the table is keyed anew
    reloaded = build_from_store(live, kept)
    assert len(keyings) == len(rec.user_features) and reloaded.features is not keyed.features
    assert reloaded.features.keys() == keyed.features.keys()  # the same bundle: the same keys, keyed again


def test_audience_quality_reads_the_histories_before_the_target_with_their_searches(signal_bundle):
    from omegaconf import OmegaConf

    from twotower.benchmarks.audience import _histories_before, audience_quality
    from twotower.train import load_data

    run, bundle = signal_bundle[0], signal_bundle[1]
    rec = Recommender.load(bundle)
    data, split = load_data(OmegaConf.load(run / "config.yaml"))
    users, test_pos = split.targets("test")
    before = _histories_before(data, users, test_pos, rec)
    compared = 0
    for u in users:
        uid, stored = data.user_ids[u], rec.histories[data.user_ids[u]]
        if len(stored) >= rec.max_len:  # the bundle keeps the last max_len events only
            continue
        got = before[uid]
        assert len(got) == len(stored) - 1  # every event but the test target
        for name in ("rows", "events", "gaps", "queries", "context"):
            np.testing.assert_array_equal(getattr(got, name), getattr(stored, name)[:-1], err_msg=name)
        compared += 1
    assert compared > 50
    result = audience_quality(run, bundle=bundle, ns=(5, 50))
    assert result["users"] == len(users) and 0 <= result["results"]["model"]["recall@50"] <= 1


def test_gpu_batch_predict_feeds_searches_context_and_features_as_the_cpu_batch_path(signal_bundle):
    """The Lightning batch path (twotower.batch_predict) reads the run's histories with their searches and
    context and each user's features: its user vectors equal the ONNX batch path's, and its top-k is exact."""
    import torch

    from serving.batch import BatchScorer
    from twotower.batch_predict import TopKPredictor, history_loader, run_features, run_histories, run_signals
    from twotower.model import model_inputs

    run = signal_bundle[0]
    rec, net = Recommender.load(signal_bundle[1]), load_model(run / "model.pt")
    signals = run_signals(run, net)
    assert signals.inputs == ("queries", "context", "user_features")
    users, _, histories = run_histories(run, signals)
    features = run_features(run, users, signals)
    assert sum(not f.any() for f in features) >= 10  # 10 users had no row in the users table: unknown
    batch = next(iter(history_loader(histories, rec.max_len, batch_size=len(users), signals=signals,
                                     features=features)))  # fmt: skip
    with torch.no_grad():
        vectors = net.eval().encode_user(**model_inputs(batch)).numpy()  # (U, D)
    want = BatchScorer(rec).encode([rec.histories[u] for u in users], features=features)
    np.testing.assert_allclose(vectors, want, atol=1e-5)
    predictor = TopKPredictor(net, k=5)
    predictor.on_predict_start()  # the item vectors, as Lightning's predict loop calls it
    with torch.no_grad():
        top = predictor.predict_step(batch)
    scores = vectors @ net.encode_items().detach().numpy().T  # (U, N)
    for b, h in enumerate(histories):
        scores[b, h.rows] = -np.inf
    np.testing.assert_array_equal(top["rows"].numpy(), np.argsort(-scores, 1, kind="stable")[:, :5])
