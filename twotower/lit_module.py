"""LightningModule: the training task around a :class:`TwoTower` (loss, validation ranking, optimizers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from twotower.losses import SoftmaxLoss, WindowHistory
from twotower.model import TwoTower


class TwoTowerModule(pl.LightningModule):
    """Trains every position of a history window to predict the next item; validates with full-catalog
    NDCG@10 / Recall@10 (history excluded, ties against the model), the metric early stopping watches."""

    def __init__(
        self,
        net: TwoTower,
        loss: SoftmaxLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        eval_k: int = 10,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        self.net = net
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
        self._item_vectors: torch.Tensor | None = None
        self.save_hyperparameters({"net_config": net.config, "eval_k": eval_k, "ema_decay": ema_decay})

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
        with torch.no_grad():
            self._item_vectors = self.eval_net.encode_items()  # (N, D)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        net = self.eval_net
        users = net.encode_user(batch["items"], batch["events"], batch["dwell"], batch["gaps"])  # (B, D)
        scores = net.score(users, self._item_vectors).float()  # (B, N)
        exclude = batch["exclude"]  # (B, H) item indices, 0 = pad
        rows = torch.arange(len(exclude), device=scores.device).unsqueeze(1).expand_as(exclude)
        valid = exclude > 0
        scores[rows[valid], exclude[valid] - 1] = float("-inf")
        target = scores.gather(1, (batch["targets"] - 1).unsqueeze(1))  # (B, 1)
        ranks = (scores >= target).sum(1).float()  # (B,) ties count against the model
        ranks = torch.where(torch.isfinite(target.squeeze(1)), ranks, torch.full_like(ranks, float("inf")))
        hit = ranks <= self.eval_k
        ndcg = torch.where(hit, 1.0 / torch.log2(ranks.clamp_max(1e9) + 1.0), torch.zeros_like(ranks))
        size = len(ranks)
        k = self.eval_k
        self.log(f"val/ndcg@{k}", ndcg.mean(), on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        self.log(
            f"val/recall@{k}",
            hit.float().mean(),
            on_epoch=True,
            prog_bar=True,
            batch_size=size,
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        self._item_vectors = None

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
