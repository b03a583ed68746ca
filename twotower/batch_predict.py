"""Batch top-k on GPUs with Lightning's ``predict`` (DDP across devices): exact scores by matrix product.

    signals = run_signals(run_dir, net)  # searches, context, user features: what the model reads
    users, item_ids, histories = run_histories(run_dir, signals)  # or serving.History objects from anywhere
    features = run_features(run_dir, users, signals)  # (F,) per user, or None
    trainer = pl.Trainer(accelerator="gpu", devices=4, strategy="ddp",
                         callbacks=[ParquetPartWriter(out, users, item_ids)])
    predictor = TopKPredictor(net, k=100, intent=run_intent(run_dir))  # intent: the served re-rank
    loader = history_loader(histories, max_len, batch_size=4096, signals=signals, features=features)
    trainer.predict(predictor, dataloaders=loader)

Each rank scores its share of the batches (Lightning's distributed sampler) and writes
``out/rank-R-batch-B.parquet`` (``user_id, rank, item_id, score``). Exact: every item is scored
(``users @ items.T`` then ``torch.topk``), the history excluded by setting its scores to -inf. The CPU path
for the same job is :mod:`serving.batch` (ONNX + FAISS); both return the online path's answers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from serving.core.history import History, histories_from_frame, padded_feeds
from serving.core.intent import CategoryIntent, IntentSettings
from serving.core.signals import Signals
from twotower.model import TwoTower, model_inputs

INPUTS = ("items", "events", "dwell", "gaps")


class HistoryDataset(Dataset):
    """(user index, History, (F,) user features or None) rows; batched by :class:`PaddedBatch`."""

    def __init__(
        self, histories: Sequence[History], features: Sequence[np.ndarray | None] | None = None
    ) -> None:
        if features is not None and len(features) != len(histories):
            raise ValueError(f"{len(features)} feature rows for {len(histories)} histories")
        self.histories, self.features = histories, features

    def __len__(self) -> int:
        return len(self.histories)

    def __getitem__(self, i: int) -> tuple[int, History, np.ndarray | None]:
        return i, self.histories[i], None if self.features is None else self.features[i]


class PaddedBatch:
    """Collate: the same (B, L) inputs the ONNX batch path builds (:meth:`Signals.batch_feeds` when the model
    reads searches, context or user features: the same neutral fills), as tensors, plus the user indices."""

    def __init__(self, max_len: int, signals: Signals | None = None) -> None:
        self.max_len, self.signals = max_len, signals

    def __call__(self, rows: list[tuple[int, History, np.ndarray | None]]) -> dict[str, torch.Tensor]:
        histories = [h for _, h, _ in rows]
        if self.signals is not None and self.signals.inputs:
            feeds = self.signals.batch_feeds(histories, self.max_len, [f for _, _, f in rows])
        else:
            feeds = padded_feeds(histories, self.max_len)
        return {
            "index": torch.tensor([i for i, _, _ in rows]),
            **{k: torch.from_numpy(v) for k, v in feeds.items()},
        }


def history_loader(
    histories: Sequence[History],
    max_len: int,
    batch_size: int = 4096,
    num_workers: int = 0,
    signals: Signals | None = None,
    features: Sequence[np.ndarray | None] | None = None,
) -> DataLoader:
    """Batches of histories (with each user's features, for a model that reads them: :func:`run_features`)."""
    return DataLoader(HistoryDataset(histories, features), batch_size=batch_size,
                      collate_fn=PaddedBatch(max_len, signals), num_workers=num_workers,
                      pin_memory=torch.cuda.is_available())  # fmt: skip


class TopKPredictor(pl.LightningModule):
    """Exact top-k over the whole catalog for each history in a batch; with ``intent`` (see
    :func:`run_intent`) every item's score gets the session-intent boost, as an exact index serves it."""

    def __init__(
        self, net: TwoTower, k: int = 100, exclude_seen: bool = True, intent: CategoryIntent | None = None
    ) -> None:
        super().__init__()
        self.net, self.k, self.exclude_seen, self.intent = net.eval(), k, exclude_seen, intent
        self.register_buffer("item_vectors", torch.zeros(0), persistent=False)
        members = intent.members if intent is not None else np.zeros((0, 0), bool)
        self.register_buffer("members", torch.from_numpy(members.astype(np.float32)), persistent=False)

    def on_predict_start(self) -> None:
        with torch.no_grad():
            self.item_vectors = self.net.encode_items()  # (N, D) on this device

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int = 0) -> dict[str, torch.Tensor]:
        users = self.net.encode_user(**model_inputs(batch))  # (B, D)
        scores = users @ self.item_vectors.T  # (B, N)
        if self.intent is not None:  # lift on the CPU (small), the boost as one product on the device
            lift = self.intent.padded_lift(batch["items"].cpu().numpy())  # (B, C)
            weights = torch.from_numpy(self.intent.query_weights(lift)).to(scores.device)
            scores = scores + weights @ self.members.T  # (B, N)
        if self.exclude_seen:
            seen = batch["items"] - 1  # (B, L) 0-based rows, -1 = padding
            seen = torch.where(
                seen >= 0, seen, seen[:, :1]
            )  # padding repeats the first event (excluded anyway)
            scores.scatter_(1, seen, float("-inf"))
        top = torch.topk(scores, min(self.k, scores.shape[1]), dim=1)
        return {"index": batch["index"], "rows": top.indices, "scores": top.values}


class ParquetPartWriter(BasePredictionWriter):
    """Writes each predicted batch of each rank to its own Parquet file (a restart can skip existing ones).

    The step only copies its top-k to the host and hands it to a pool of ``writers`` threads that build the
    columns (Arrow gathers over the id arrays, no per-row Python) and write the files, at most ``queue_size``
    batches behind, so the device keeps scoring while the host writes: Arrow releases the GIL, so parts are
    written side by side (one thread bounds a fast card at about half its raw speed). An error in a writer is
    raised in the predict loop (at the next batch or at the end), never lost; the end of ``predict`` waits for
    every file.
    """

    def __init__(
        self,
        out: str | Path,
        users: Sequence[str],
        item_ids: Sequence[str],
        queue_size: int = 8,
        writers: int | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        # half the cores, at most 4: the other half feeds the device (or, on a CPU, scores)
        writers = writers if writers is not None else max(1, min(4, (os.cpu_count() or 2) // 2))
        if writers < 1 or queue_size < 1:
            raise ValueError(f"writers and queue_size must be >= 1, not {writers} and {queue_size}")
        self.out = Path(out)
        self.users = pa.array(np.asarray(users, dtype=object), type=pa.string())
        self.item_ids = pa.array(np.asarray(item_ids, dtype=object), type=pa.string())
        self.out.mkdir(parents=True, exist_ok=True)
        self.queue_size, self.writers = queue_size, writers
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._error: BaseException | None = None

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        part = (prediction["index"].cpu().numpy(), prediction["rows"].cpu().numpy(),
                prediction["scores"].float().cpu().numpy())  # fmt: skip
        self._put(self.out / f"rank-{trainer.global_rank}-batch-{batch_idx:06d}.parquet", part)

    def table(self, index: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> pa.Table:
        """One batch's (B,) user indices, (B, k) item rows and scores -> its rows (user_id, rank, item_id, score)."""
        k = rows.shape[1]
        found = (rows >= 0).ravel()  # a re-ranked row can hold fewer than k (tiny catalogs)
        users = np.repeat(index, k)[found]
        return pa.table({"user_id": self.users.take(pa.array(users)),
                         "rank": pa.array(np.tile(np.arange(1, k + 1), len(index))[found]),
                         "item_id": self.item_ids.take(pa.array(rows.ravel()[found])),
                         "score": pa.array(scores.ravel()[found])})  # fmt: skip

    def _write(self, path: Path, part: tuple[np.ndarray, ...]) -> None:
        pq.write_table(self.table(*part), path)

    def _put(self, path: Path, part: tuple[np.ndarray, ...]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.writers, thread_name_prefix="parquet-writer")
        self._settle(block=len(self._pending) >= self.queue_size)  # at most queue_size parts in memory
        self._raise()
        self._pending.append(self._pool.submit(self._write, path, part))

    def _settle(self, block: bool) -> None:
        """Drop finished writes, keeping the first error; with ``block``, wait for one to finish first."""
        if block:
            wait(self._pending, return_when=FIRST_COMPLETED)
        still = []
        for future in self._pending:
            if not future.done():
                still.append(future)
            elif not future.cancelled() and future.exception() is not None and self._error is None:
                self._error = future.exception()  # a cancelled write (the loop failed first) is no error
        self._pending = still

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing Parquet parts under {self.out} failed") from self._error

    def _stop(self, cancel: bool) -> None:
        """Wait for the writes under way (``cancel``: drop those not started) and keep a write's error."""
        if self._pool is not None:
            try:
                self._pool.shutdown(wait=True, cancel_futures=cancel)
                self._settle(block=False)
            finally:
                self._pool, self._pending = None, []

    def close(self) -> None:
        """Wait for every queued file; raise a writer's error if one failed."""
        self._stop(cancel=False)
        self._raise()

    def on_predict_end(self, trainer, pl_module) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._stop(cancel=True)  # the loop's own error is the one raised


def run_signals(run_dir: Path, net: TwoTower) -> Signals:
    """What ``net`` reads beyond the four inputs, with the run's vocabularies (as a bundle's manifest gives)."""
    from twotower.export import model_signals

    return model_signals(net, json.loads((Path(run_dir) / "data" / "vocab.json").read_text()))


def run_histories(
    run_dir: Path, signals: Signals | None = None
) -> tuple[list[str], list[str], list[History]]:
    """(user ids, item ids, per-user histories) from a training run's ``data/`` artifacts; with ``signals``
    the histories carry the searches and context the model reads."""
    vocab = json.loads((run_dir / "data" / "vocab.json").read_text())
    frame = pd.read_parquet(run_dir / "data" / "histories.parquet")
    table = histories_from_frame(
        frame,
        {item: i for i, item in enumerate(vocab["items"])},
        {name: i for i, name in enumerate(vocab["events"])},
        signals.stored_arrays(frame) if signals is not None else None,
    )
    users = sorted(table)
    return users, vocab["items"], [table[u] for u in users]


def run_features(run_dir: Path, users: Sequence[str], signals: Signals) -> list[np.ndarray | None] | None:
    """Each user's (F,) feature indices from the run's ``users.parquet`` (None: a user without a row), or
    None when the model reads no user feature."""
    path = Path(run_dir) / "data" / "users.parquet"
    if not signals.features or not path.exists():
        return None
    table = signals.stored_features(pd.read_parquet(path))
    return [table.get(str(u)) for u in users]


def run_intent(run_dir: Path, rerank: dict | None = None) -> CategoryIntent | None:
    """The session-intent re-rank a bundle exported from this run serves (``rerank``: other settings)."""
    from twotower.export import rerank_settings

    vocab = json.loads((run_dir / "data" / "vocab.json").read_text())
    settings = IntentSettings.from_dict(rerank_settings(run_dir, rerank)["intent"])
    items = pd.read_parquet(run_dir / "data" / "items.parquet")
    return CategoryIntent.from_items(items, vocab.get("categories") or ["<pad>"], settings)
