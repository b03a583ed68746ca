"""LightningModule: the training task around a :class:`TwoTower` (loss, validation ranking, optimizers)."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from twotower import distributed, metrics
from twotower.data.layout import target_layout
from twotower.losses import SoftmaxLoss, WindowHistory
from twotower.model import TwoTower, model_inputs
from twotower.ranking import rank_targets

log = logging.getLogger(__name__)
# the module's own batch hook (the target count, on the host) is meant to run beside a datamodule
warnings.filterwarnings("ignore", message=".*overridden `on_before_batch_transfer` in `LightningModule`")


def ema_update(ema: list[torch.Tensor], current: list[torch.Tensor], _n: Any, decay: float) -> None:
    """torch's ``get_ema_multi_avg_fn(decay)`` as a module-level function: a partial of it pickles, so
    ``trainer.strategy=ddp_spawn`` can send the module to its processes."""
    if torch.is_floating_point(ema[0]) or torch.is_complex(ema[0]):
        torch._foreach_lerp_(ema, current, 1 - decay)
    else:
        for p_ema, p_model in zip(ema, current, strict=True):
            p_ema.copy_(p_ema * decay + p_model * (1 - decay))


def update_average(ema: torch.optim.swa_utils.AveragedModel, model: torch.nn.Module, first: bool) -> None:
    """``ema.update_parameters(model)`` for ``use_buffers=False`` without reading ``ema.n_averaged`` back from
    the device, which costs two host synchronisations per step on a GPU: the caller knows whether this is the
    first update (a copy) or a later one (``ema.multi_avg_fn``). Parameters only: unlike torch's, the
    model's buffers are not copied over at each step (the towers' buffers are set once, on both copies)."""
    if ema.use_buffers or ema.multi_avg_fn is None:
        raise ValueError("update_average averages parameters only, with a multi_avg_fn")
    averaged = [p.detach() for p in ema.module.parameters()]
    current = [p.detach().to(a.device) for p, a in zip(model.parameters(), averaged, strict=True)]
    if first:
        for a, c in zip(averaged, current, strict=True):
            a.copy_(c)
    else:  # as AveragedModel: one multi-tensor update per (device, dtype) group
        groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
        for a, c in zip(averaged, current, strict=True):
            pair = groups.setdefault((a.device, a.dtype), ([], []))
            pair[0].append(a)
            pair[1].append(c)
        for group_averaged, group_current in groups.values():
            ema.multi_avg_fn(group_averaged, group_current, ema.n_averaged)
    ema.n_averaged += 1


class TwoTowerModule(pl.LightningModule):
    """Trains every position of a history window to predict the next item; validates with full-catalog
    NDCG@10 / Recall@10 (history excluded, ties against the model), the metric early stopping watches.

    Validation ranks with :func:`twotower.ranking.rank_targets` on the module's device (in chunks of
    ``eval_chunk_items`` catalog columns when set) and turns the epoch's ranks into figures with
    :func:`twotower.metrics.ranking_metrics`, as the final evaluation does.
    """

    def __init__(
        self,
        net: TwoTower,
        loss: SoftmaxLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        eval_k: int = 10,
        ema_decay: float | None = None,
        eval_chunk_items: int | None = None,
        id_prior_events: float | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.id_prior_events = id_prior_events
        # Exponential moving average of the weights: validated, checkpointed and exported instead of the raw
        # weights when enabled (smooths the epoch-to-epoch noise early stopping would otherwise select on).
        self.ema = (
            torch.optim.swa_utils.AveragedModel(
                net, multi_avg_fn=functools.partial(ema_update, decay=ema_decay)
            )
            if ema_decay
            else None
        )
        if self.ema is not None:  # averaged, never trained: DDP must not wait for gradients of the copy
            self.ema.requires_grad_(False)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.eval_k = eval_k
        self.eval_chunk_items = eval_chunk_items
        self._item_vectors: torch.Tensor | None = None
        self._val_ranks: list[torch.Tensor] = []
        self._ema_updates: int | None = None  # on the host: how often the EMA was updated
        self.save_hyperparameters(
            {"net_config": net.config.to_dict(), "eval_k": eval_k, "ema_decay": ema_decay}
        )

    def on_fit_start(self) -> None:
        """Shrink rarely seen ids towards their categories (:meth:`ItemTower.set_id_weights`) by the training
        events per item, which the datamodule counts; a resumed run gets the same weights again."""
        if not self.id_prior_events:
            return
        counts_of = getattr(self.trainer.datamodule, "item_counts", None)
        if counts_of is None:
            log.warning("id_prior_events is set but the datamodule does not count items: ids are not shrunk")
            return
        counts = counts_of()  # (N + 1,)
        for net in {id(n): n for n in (self.net, self.eval_net)}.values():
            net.item_tower.set_id_weights(counts, float(self.id_prior_events))

    @property
    def eval_net(self) -> TwoTower:
        """The weights that are validated and shipped: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.net

    def forward(self, items, events, dwell, gaps, **signals) -> torch.Tensor:
        """(B, L) history -> (B, D) user vectors, from the weights that are validated and shipped."""
        return self.eval_net.encode_user(items, events, dwell, gaps, **signals)

    def _shared_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.net.user_states(**model_inputs(batch))  # (B, L', D)
        targets, weights = batch["targets"], batch["weights"]  # (B, L)
        shift = 0
        if states.shape[1] > targets.shape[1]:  # a start token (user features) opens each row
            # the start state predicts S items of the user from the features alone: it is repeated per target
            start_targets = batch["start_targets"].reshape(len(targets), -1)  # (B, S)
            shift = start_targets.shape[1]
            states = torch.cat([states[:, :1].expand(-1, shift, -1), states[:, 1:]], 1)  # (B, S + L, D)
            targets = torch.cat([start_targets, targets], 1)  # (B, S + L)
            weights = torch.cat([batch["start_weights"].reshape(len(targets), -1), weights], 1)
        suffix = "_start" if shift else ""
        index = batch.get(f"target_index{suffix}")  # (M,) flat positions in (B, L'), counted on the host
        if index is None:  # validation, or a step called without the trainer's transfer hook
            rows, positions = (targets > 0).nonzero(as_tuple=True)  # (M,), (M,): waits on a device's count
            unique = None
        else:  # integer gathers of a known length: nothing waits on the device, in the step or its backward
            rows, positions = index // targets.shape[1], index % targets.shape[1]  # (M,), (M,)
            unique = (batch[f"target_unique{suffix}"], batch[f"target_inverse{suffix}"])  # (P,), (M,)
        seen = (positions - shift).clamp(min=-1)  # the start state's rows (-1) have seen nothing
        history = WindowHistory(batch["items"], rows, seen)
        return self.loss(self.net, states[rows, positions], targets[rows, positions], weights[rows, positions],
                         history, unique=unique)  # fmt: skip

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count a training batch's targets on the host, before it moves: on a GPU the count read back from
        the device would wait for the step (a host synchronisation per step)."""
        if self.trainer.training and isinstance(batch, dict) and "targets" in batch:
            if "target_index" not in batch:  # collated elsewhere than TrainWindows
                batch.update(target_layout(batch))
            batch["n_targets"] = len(batch["target_index"])
        return batch

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch)
        n_targets = batch.get("n_targets")
        if n_targets is None:  # called directly, without the trainer's transfer hook
            n_targets = int((batch["targets"] > 0).sum())
        # on the progress bar only when there is one: Lightning reads a bar's values back every step
        on_bar = getattr(self._trainer, "progress_bar_callback", None) is not None
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=on_bar, batch_size=n_targets)
        if self.net.log_temperature.requires_grad:
            self.log("train/temperature", self.net.temperature, on_step=False, on_epoch=True)
        return loss

    def on_train_start(self) -> None:
        self._ema_updates = None  # read again from the (possibly restored) average at the first step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            if self._ema_updates is None:  # read once, at the first step (a resumed run carries its count)
                self._ema_updates = int(self.ema.n_averaged)
            update_average(self.ema, self.net, first=self._ema_updates == 0)
            self._ema_updates += 1

    def on_validation_epoch_start(self) -> None:
        self._val_ranks = []
        with torch.no_grad():
            self._item_vectors = self.eval_net.encode_items()  # (N, D)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        net, items = self.eval_net, self._item_vectors
        assert items is not None
        users = net.encode_user(**model_inputs(batch))  # (B, D)

        def scores(start: int, stop: int) -> torch.Tensor:
            return net.score(users, items[start:stop]).float()  # (B, stop - start)

        ranks, _ = rank_targets(
            scores,
            batch["targets"] - 1,
            batch["exclude"],
            chunk_items=self.eval_chunk_items,
            n_items=len(items),
        )  # (B,) on the device; only the epoch's ranks go to the host
        self._val_ranks.append(ranks)

    def on_validation_epoch_end(self) -> None:
        self._item_vectors = None
        # every rank validates its own share of the queries (a different count each): all of them gather,
        # an empty share included, or the others would wait for it
        empty = torch.zeros(0, dtype=torch.float64, device=self.device)
        local = torch.cat(self._val_ranks or [empty])  # (this rank's queries,)
        ranks = distributed.gather_uneven(local).reshape(-1)  # (sum of the ranks' queries,)
        self._val_ranks = []
        if not len(ranks):
            return
        for name, value in metrics.ranking_metrics(ranks.cpu().numpy(), (self.eval_k,)).items():
            self.log(f"val/{name}", value, prog_bar=name != "mrr")

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, param in self.net.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self.optimizer_factory(params=groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
