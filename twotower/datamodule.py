"""LightningDataModule over an encoded, split log."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from twotower.data.schema import EncodedLog
from twotower.data.sequences import EvalQueries, LengthGroupedBatches, SequenceArrays, TrainWindows
from twotower.data.splits import Split


class TwoTowerDataModule(pl.LightningDataModule):
    def __init__(
        self,
        data: EncodedLog,
        split: Split,
        max_len: int = 50,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        event_weights: dict[str, float] | None = None,
        val_max_users: int | None = 10000,
        group_by_length: bool = True,
        shuffle_ties: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data, self.split, self.max_len = data, split, max_len
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_max_users, self.seed = val_max_users, seed
        self.group_by_length = group_by_length
        self._train_batches: LengthGroupedBatches | None = None
        self.arrays = SequenceArrays.from_log(data, dict(event_weights) if event_weights else None)
        self.train_set = TrainWindows(data, split, self.arrays, max_len, shuffle_ties=shuffle_ties, seed=seed)
        self.val_set = self.queries("val", max_users=val_max_users)
        if len(self.train_set) == 0:
            raise ValueError("no training windows: every user needs at least 2 training events")

    def queries(self, stage: str, max_users: int | None = None) -> EvalQueries:
        return EvalQueries(self.data, self.split, stage, self.arrays, self.max_len, max_users, self.seed)

    def item_counts(self) -> torch.Tensor:
        """(N + 1,) training events per item index (0 = padding): how much evidence each id embedding has."""
        items = self.data.items[self.split.train_mask(self.data)]
        return torch.from_numpy(np.bincount(items, minlength=self.data.n_items + 1))

    def target_counts(self) -> torch.Tensor:
        return torch.from_numpy(self.train_set.target_counts(self.data.n_items))

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=dataset.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if not self.group_by_length:
            return self._loader(self.train_set, self.batch_size, shuffle=True)
        if self._train_batches is None:  # one sampler for the whole fit, so every epoch draws anew
            self._train_batches = LengthGroupedBatches(
                self.train_set.lengths, self.batch_size, seed=self.seed
            )
        return DataLoader(
            self.train_set,
            batch_sampler=self._train_batches,
            collate_fn=self.train_set.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)
