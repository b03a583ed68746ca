"""LightningModule: the training task around a :class:`TwoTower` (loss, validation ranking, optimizers)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from twotower import metrics
from twotower.losses import SoftmaxLoss, WindowHistory
from twotower.model import TwoTower
from twotower.ranking import rank_targets

log = logging.getLogger(__name__)


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
                net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay)
            )
            if ema_decay
            else None
        )
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.eval_k = eval_k
        self.eval_chunk_items = eval_chunk_items
        self._item_vectors: torch.Tensor | None = None
        self._val_ranks: list[torch.Tensor] = []
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

    def forward(self, items, events, dwell, gaps) -> torch.Tensor:
        """(B, L) history -> (B, D) user vectors, from the weights that are validated and shipped."""
        return self.eval_net.encode_user(items, events, dwell, gaps)

    def _shared_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.net.user_states(
            batch["items"], batch["events"], batch["dwell"], batch["gaps"]
        )  # (B, L, D)
        mask = batch["targets"] > 0  # (B, L)
        rows, positions = mask.nonzero(as_tuple=True)  # (M,), (M,)
        history = WindowHistory(batch["items"], rows, positions)
        return self.loss(self.net, states[mask], batch["targets"][mask], batch["weights"][mask], history)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch)
        n_targets = int((batch["targets"] > 0).sum())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n_targets)
        if self.net.log_temperature.requires_grad:
            self.log("train/temperature", self.net.temperature, on_step=False, on_epoch=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def on_validation_epoch_start(self) -> None:
        self._val_ranks = []
        with torch.no_grad():
            self._item_vectors = self.eval_net.encode_items()  # (N, D)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        net, items = self.eval_net, self._item_vectors
        assert items is not None
        users = net.encode_user(batch["items"], batch["events"], batch["dwell"], batch["gaps"])  # (B, D)

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
        if not self._val_ranks:
            return
        ranks = self.all_gather(torch.cat(self._val_ranks)).reshape(-1)  # every process's queries
        self._val_ranks = []
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
