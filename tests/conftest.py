"""Shared fixtures: a tiny synthetic log, its encoding and split, and a composed Hydra config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from twotower.config import CONFIG_DIR, PROJECT_ROOT
from twotower.data.encode import encode_log
from twotower.data.splits import leave_last_out
from twotower.data.synthetic import generate

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
ML100K = SHARED_DATA / "ml-100k"
LASTFM = SHARED_DATA / "lastfm-hetrec2011-2k"

needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").exists(), reason=f"MovieLens 100K not found at {ML100K}"
)

TINY_DATA = ["data.loader.n_users=120", "data.loader.n_items=60", "data.loader.n_categories=6",
             "data.loader.mean_events=15"]  # fmt: skip
FAST_TRAIN = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger=csv", "model.net.dim=16",
              "model.net.max_len=20", "datamodule.batch_size=32", "eval.knn_neighbors=[10]",
              "eval.ease_l2=[10.0]"]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_raw():
    return generate(n_users=80, n_items=50, n_categories=5, mean_events=12, seed=3)


@pytest.fixture(scope="session")
def tiny_data(tiny_raw):
    return encode_log(tiny_raw, min_events=3)


@pytest.fixture(scope="session")
def tiny_split(tiny_data):
    return leave_last_out(tiny_data)


def with_user_features(data):
    """An encoded log with one static user feature (3 values) for every user."""
    import dataclasses

    import numpy as np

    features = (np.arange(data.n_users) % 3 + 1).reshape(-1, 1)  # (U, 1), 0 = unknown stays unused
    return dataclasses.replace(data, user_features=features, user_feature_vocab={"f": ["", "a", "b", "c"]})


def compose_config(overrides: list[str], output_dir: Path | None = None):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir else []
        return compose("train", overrides=overrides + extra)


@pytest.fixture
def tiny_cfg(tmp_path):
    return compose_config(TINY_DATA + FAST_TRAIN, tmp_path / "run")


@pytest.fixture(scope="session")
def run_and_bundle(tmp_path_factory):
    """A tiny trained run and its exported HNSW bundle: (run_dir, bundle_dir, manifest)."""
    from serving.core.index import IndexSpec
    from twotower.export import export_bundle
    from twotower.train import train

    root = tmp_path_factory.mktemp("export")
    # the list re-rank off by default here: the tests compare answers with exact references (knobs: own tests)
    overrides = ["eval.baselines=[popularity]", "rerank.list.diversity=0.0", "rerank.list.calibrate=0.0"]
    train(compose_config(TINY_DATA + FAST_TRAIN + overrides, root / "run"))
    manifest = export_bundle(root / "run", root / "bundle", IndexSpec(kind="hnsw"))
    return root / "run", root / "bundle", manifest


@pytest.fixture(scope="module")
def rec(run_and_bundle):
    """The tiny bundle served in-process (one per test module: tests may change its catalog)."""
    from serving.recommender import Recommender

    return Recommender.load(run_and_bundle[1])


@pytest.fixture(scope="session")
def signal_bundle(tmp_path_factory):
    """A tiny run on a CSV log with searches, a device column and a users table (user features), and its
    bundle: (run_dir, bundle_dir, manifest, train result)."""
    import numpy as np
    import pandas as pd

    from twotower.export import export_bundle

    root = tmp_path_factory.mktemp("signals")
    raw = generate(n_users=120, n_items=60, n_categories=6, mean_events=15, search_prob=0.3, seed=1)
    events = raw.events.rename(columns={"user": "user_id", "item": "item_id", "ts": "timestamp"})
    rng = np.random.default_rng(0)
    events["device"] = rng.choice(["mobile", "desktop", ""], len(events))
    events.to_csv(root / "events.csv", index=False)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(110)],  # 10 users without a row: unknown
                          "segment": rng.choice(["a", "b", "c"], 110), "country": rng.choice(["fr", "de"], 110)})  # fmt: skip
    users.to_csv(root / "users.csv", index=False)
    raw.items.assign(category=["|".join(c) for c in raw.items["categories"]]).drop(columns="categories").rename(
        columns={"item": "item_id"}).to_csv(root / "items.csv", index=False)  # fmt: skip
    overrides = ["data=csv", f"data.path={root / 'events.csv'}", "data.event_col=event", "data.dwell_col=dwell_s",
                 "data.query_col=query", "data.context_cols=[device]", "data.hour_of_week=true",
                 f"data.users_path={root / 'users.csv'}", f"data.items_path={root / 'items.csv'}",
                 "eval.baselines=[popularity]", "rerank.list.diversity=0.0", "rerank.list.calibrate=0.0"]  # fmt: skip
    from twotower.train import train

    result = train(compose_config(overrides + FAST_TRAIN, root / "run"))
    manifest = export_bundle(root / "run", root / "bundle")
    return root / "run", root / "bundle", manifest, result
