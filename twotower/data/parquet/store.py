"""A built cache entry read back: :class:`StreamLog`, the in-memory log of the sampled evaluation users (with
the whole catalog's vocabularies and item features) plus the index of the training shards."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twotower.data.parquet.partition import read_ipc
from twotower.data.schema import ITEM, USER, EncodedLog, LoadReport
from twotower.data.splits import Split, make_split


@dataclass
class StreamLog(EncodedLog):
    """An :class:`EncodedLog` of the evaluation users only; training reads ``entry``'s shards
    (:class:`twotower.data.stream.StreamDataModule`). ``summary()`` counts the whole log."""

    entry: Path = field(default_factory=Path)
    index: dict[str, Any] = field(default_factory=dict)
    split: Split | None = None

    def counts(self, kind: str) -> torch.Tensor:
        """(N + 1,) over the whole log's training events: ``target`` (training targets, for logQ), ``item``
        (training events per item) or ``item_user`` (training users per item)."""
        return torch.from_numpy(np.load(self.entry / f"{kind}_counts.npy"))

    def summary(self) -> dict:
        return {"name": self.name, "users": self.index["users"], "items": self.n_items,
                "interactions": self.index["interactions"], "evaluated_users": self.n_users}  # fmt: skip


def load_entry(entry: Path) -> StreamLog:
    """The evaluation users' log, the vocabularies and the shard index of a complete cache entry."""
    index = json.loads((entry / "index.json").read_text())
    ev = {k: np.load(entry / "eval" / f"{k}.npy") for k in ("users", "items", "ts", "events", "dwell")}
    user_index = np.load(entry / "eval" / "user_index.npy")
    local = np.searchsorted(user_index, ev["users"])  # (E,) sampled users in global order -> 0..U_eval-1
    offsets = np.concatenate([[0], np.cumsum(np.bincount(local, minlength=len(user_index)))]).astype(np.int64)
    users = read_ipc(entry / "users.arrow")[USER].take(user_index).to_pylist()
    report = LoadReport(**index["report"])
    report.notes.append(
        f"streamed from Parquet: {index['users']} users in {len(index['shards'])} shards; validation and test "
        f"on {len(user_index)} sampled users, whose training events also fit the baselines"
    )
    data = StreamLog(
        name=index["name"], user_ids=users, item_ids=read_ipc(entry / "items.arrow")[ITEM].to_pylist(),
        event_names=index["events"], category_names=index["categories"], users=local.astype(np.int64),
        items=ev["items"].astype(np.int64), ts=ev["ts"], events=ev["events"].astype(np.int64),
        dwell=ev["dwell"], user_offsets=offsets, item_categories=np.load(entry / "item_categories.npy"),
        item_titles=index["titles"], has_time=index["has_time"], report=report, entry=entry, index=index,
    )  # fmt: skip
    data.split = make_split(data, **index["settings"]["split"])
    return data
