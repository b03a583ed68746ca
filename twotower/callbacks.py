"""Training guards: a NaN/Inf loss stops the run with the step named, and a resumed run replays the same
batches and random draws as the run it continues.

Resuming (``ckpt_path=last``, :func:`resolve_ckpt_path`) restores weights, optimizer, EMA, early-stopping and
checkpoint state through Lightning; :class:`ResumableRandomness` adds what Lightning leaves out, so a run
stopped after epoch e and resumed continues as an uninterrupted run would.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from twotower import distributed

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the weights after that step are not worth keeping."""


class CheckpointNotFoundError(FileNotFoundError):
    """``ckpt_path`` names a checkpoint that is not there."""


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """``None`` (a fresh run), ``last`` (``checkpoint_dir/last.ckpt``) or a file, checked before any work.

    Lightning's own ``ckpt_path="last"`` starts from scratch with a warning when there is no checkpoint; a
    resume that silently retrains from epoch 0 is worse than an error naming the path it looked at."""
    if ckpt_path is None:
        return None
    path = checkpoint_dir / "last.ckpt" if str(ckpt_path) == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = " (resume with the killed run's paths.output_dir)" if str(ckpt_path) == "last" else ""
        raise CheckpointNotFoundError(f"no checkpoint to resume from at {path}{hint}")
    return str(path)


class FiniteLossCheck(pl.Callback):
    """Stops training at the first NaN or infinite loss, naming its global step and epoch.

    Each step only folds ``isfinite(loss)`` into a flag on the loss's device (no host sync); the flag is read
    every ``check_every_n_steps`` steps (default: the trainer's ``log_every_n_steps``, when logging syncs
    anyway) and on the last batch of every epoch, before validation and checkpointing, so no NaN model is
    validated or saved and ``last.ckpt`` stays the last good state.
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._step = 0
        self._first_bad: torch.Tensor | None = None  # () int64: global step of the first bad loss, -1 = none

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._step = trainer.global_step  # the step this batch trains (before the optimizer steps)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        fresh = ~torch.isfinite(loss.detach()).all() & (self._first_bad < 0)
        self._first_bad = torch.where(fresh, torch.full_like(self._first_bad, self._step), self._first_bad)
        every = self.check_every_n_steps or trainer.log_every_n_steps or 1
        if trainer.is_last_batch or (self._step + 1) % every == 0:
            self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        """Raise :class:`NonFiniteLossError` if a loss since the last check was NaN or infinite (one sync)."""
        if self._first_bad is None:
            return
        first_bad = self._first_bad
        if distributed.active():  # every rank stops together, at the earliest rank's bad step
            never = torch.iinfo(torch.long).max
            first_bad = torch.where(first_bad < 0, never, first_bad)
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
            first_bad = torch.where(first_bad == never, -1, first_bad)
        step = int(first_bad)
        if step >= 0:
            self._first_bad = None
            raise NonFiniteLossError(
                f"training loss is NaN or infinite at global step {step} (epoch {trainer.current_epoch}); "
                "the run stops here: lower model.optimizer.lr, check the data, or resume from "
                "checkpoints/last.ckpt (saved at the end of the last epoch whose losses were all finite)"
            )


class RanksAgree(pl.Callback):
    """Under DDP, before any training: every rank runs with the same ``settings`` (a mapping of names to
    values), or every rank stops with :class:`twotower.distributed.RankMismatchError` naming what differs."""

    HINTS = {"paths.output_dir": "torchrun and srun start every rank on its own clock: pass paths.output_dir"}

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        distributed.check_ranks_agree(self.settings, what="settings", hints=self.HINTS)


class ResumableRandomness(pl.Callback):
    """Saves the random state a checkpoint needs to continue exactly: the global torch (CPU and CUDA), numpy
    and Python generators, the training set's own generator (``dataset.rng``: same-timestamp shuffling and the
    profile's start-target draws) and the epoch a length-grouped batch sampler draws from.

    Lightning restores weights, optimizer and loop counters but not these; without them a resumed run draws
    other dropout masks and batches than the run it continues: close in quality, but not the same run.

    Under DDP each rank draws its own stream: the checkpoint (written by rank 0) holds every rank's state,
    gathered when it is saved, and each rank restores its own.
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._restored: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _dataset_rng(self) -> np.random.Generator | None:
        loader = getattr(self._trainer, "train_dataloader", None) if self._trainer is not None else None
        rng = getattr(getattr(loader, "dataset", None), "rng", None)
        return rng if isinstance(rng, np.random.Generator) else None

    def state_dict(self) -> dict[str, Any]:
        # plain types and tensors only, so the checkpoint still loads with torch.load(weights_only=True); the
        # legacy numpy generator is the one seed_everything seeds and libraries may draw from
        name, key, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if (rng := self._dataset_rng()) is not None:
            state["dataset"] = rng.bit_generator.state
        if distributed.active():  # every rank saves a checkpoint together; rank 0 writes it
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, state)
            return {"ranks": ranks}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ranks" in state_dict:  # saved by a DDP run: this rank's own state (rank 0's in one process)
            rank, world = distributed.rank_and_world()
            ranks = state_dict["ranks"]
            if len(ranks) != world:
                log.warning(
                    "the checkpoint holds the random state of %d ranks, this run has %d: rank %d continues "
                    "from rank %d's", len(ranks), world, rank, rank % len(ranks)
                )  # fmt: skip
            state_dict = ranks[rank % len(ranks)]
        self._restored = state_dict
        torch.set_rng_state(state_dict["torch"])
        name, key, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        # the training loader is reachable only now: restore its set's generator in a resumed run's first epoch
        restored = self._restored or {}
        if "dataset" in restored and (rng := self._dataset_rng()) is not None:
            rng.bit_generator.state = restored["dataset"]
        self._restored = None
        # a batch sampler counting its own epochs (LengthGroupedBatches) restarts at 0 in a resumed run:
        # align it with the trainer's epoch so that epoch e draws the same batches either way
        sampler = getattr(loader, "batch_sampler", None)
        if sampler is not None and isinstance(getattr(sampler, "epoch", None), int):
            sampler.epoch = trainer.current_epoch
