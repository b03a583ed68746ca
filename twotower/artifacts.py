"""What a training run leaves beside its checkpoint: model weights with constructor args, vocabularies,
item table and user histories (everything the export step needs, without re-reading the raw log)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twotower.data.schema import EncodedLog
from twotower.data.sequences import event_gaps
from twotower.data.signals import history_signal_columns, signal_vocab, users_frame
from twotower.data.splits import Split
from twotower.model import ModelConfig, TwoTower

MODEL_FILE = "model.pt"


def save_model(model: TwoTower, path: Path) -> None:
    """Weights + constructor config as plain types (loadable with ``weights_only=True``)."""
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, path)


def load_model(path: Path, map_location: str = "cpu") -> TwoTower:
    """The saved model in eval mode (the item-category table comes with the weights)."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    model = TwoTower(ModelConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def train_counts(data: EncodedLog, split: Split) -> np.ndarray:
    """(N,) training interactions per item (``train_count`` in items.parquet: the popularity fallback and the
    session-intent baseline, which training's served evaluation must share with the bundle)."""
    return np.bincount(data.items[split.train_mask(data)], minlength=data.n_items + 1)[1:]


def save_data_artifacts(data: EncodedLog, split: Split, out: Path, max_len: int) -> None:
    """vocab.json, items.parquet (ids, categories, title, training counts) and histories.parquet (last events)."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = {
        "dataset": data.name,
        "users": data.user_ids,
        "items": data.item_ids,
        "events": data.event_names,
        "categories": data.category_names,
        "has_time": data.has_time,
        "signals": signal_vocab(data),  # queries, context, user features (serving maps strings with these)
    }
    (out / "vocab.json").write_text(json.dumps(vocab))
    users = users_frame(data)
    if users is not None:
        users.to_parquet(out / "users.parquet", index=False)
    counts = train_counts(data, split)
    cats = [[data.category_names[c] for c in row if c > 0] for row in data.item_categories[1:]]
    items = pd.DataFrame({"item_id": data.item_ids, "categories": cats, "train_count": counts})
    if data.item_titles is not None:
        items["title"] = data.item_titles
    items.to_parquet(out / "items.parquet", index=False)
    # The last max_len events of every user (all of them: serving knows the whole log).
    position = np.arange(data.n_interactions) - data.user_offsets[data.users]
    length = np.diff(data.user_offsets)[data.users]
    history_frame(data, position >= length - max_len).to_parquet(out / "histories.parquet", index=False)


def history_frame(data: EncodedLog, rows: np.ndarray) -> pd.DataFrame:
    """The events ``rows`` (an (E,) bool mask) as a stored-histories table (histories.parquet's columns, the
    searches and context included), which :func:`serving.core.history.histories_from_frame` reads."""
    gaps = event_gaps(data)  # from the whole log: an event's gap is to the user's previous event
    return pd.DataFrame(
        {
            "user_id": np.asarray(data.user_ids, dtype=object)[data.users[rows]],
            "item_id": np.asarray(data.item_ids, dtype=object)[data.items[rows] - 1],
            "event": np.asarray(data.event_names, dtype=object)[data.events[rows]],
            "dwell_s": data.dwell[rows],
            "ts": data.ts[rows],
            "gap_s": gaps[rows],
            **history_signal_columns(data, rows),
        }
    )
