"""LightningDataModule over an encoded, split log."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from twotower import distributed
from twotower.data.schema import EncodedLog
from twotower.data.sequences import EvalQueries, LengthGroupedBatches, SequenceArrays, TrainWindows
from twotower.data.splits import Split


class TwoTowerDataModule(pl.LightningDataModule):
    """Training windows and validation queries; under data-parallel training each rank loads the same log
    and takes its own share (the trainer runs with ``use_distributed_sampler=False``: the shares are cut
    here, so that the length-grouped batches and the step count stay the same on every rank)."""

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
        pin_memory: bool = False,
        start_targets: int = 1,
    ) -> None:
        super().__init__()
        self.data, self.split, self.max_len = data, split, max_len
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.pin_memory = pin_memory  # page-locked batches: a GPU copies them while it computes
        self.val_max_users, self.seed = val_max_users, seed
        self.group_by_length = group_by_length
        self._train_batches: LengthGroupedBatches | None = None
        self._train_sampler: DistributedSampler | None = None
        self.arrays = SequenceArrays.from_log(data, dict(event_weights) if event_weights else None)
        self.train_set = TrainWindows(
            data,
            split,
            self.arrays,
            max_len,
            shuffle_ties=shuffle_ties,
            seed=seed,
            start_targets=start_targets,
        )
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

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str) -> None:
        """Under DDP (the process group is up by now): every rank must have loaded the same data, or all fail."""
        if self._rank_and_world()[1] > 1:
            distributed.check_ranks_agree(
                distributed.data_fingerprint(
                    self.data,
                    train_windows=len(self.train_set),
                    val_queries=len(self.val_set),
                    max_len=self.max_len,
                    batch_size=self.batch_size,
                    seed=self.seed,
                )
            )

    def _loader(self, dataset, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            collate_fn=dataset.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        if not self.group_by_length:
            if world == 1:
                return self._loader(self.train_set, self.batch_size, shuffle=True)
            if self._train_sampler is None:  # pads to an equal share; Lightning sets its epoch
                self._train_sampler = DistributedSampler(
                    self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
                )
            return self._loader(self.train_set, self.batch_size, False, self._train_sampler)
        if self._train_batches is None:  # one sampler for the whole fit, so every epoch draws anew
            self._train_batches = (
                LengthGroupedBatches(self.train_set.lengths, self.batch_size, seed=self.seed)
                if world == 1
                else distributed.DistributedLengthGroupedBatches(
                    self.train_set.lengths, self.batch_size, world, rank, seed=self.seed
                )
            )
        return DataLoader(
            self.train_set,
            batch_sampler=self._train_batches,
            collate_fn=self.train_set.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        shard = distributed.RankShard(len(self.val_set), world, rank) if world > 1 else None
        return self._loader(self.val_set, self.eval_batch_size, False, shard)
