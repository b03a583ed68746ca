"""The Lightning side of data-parallel training: the trainer with its strategy and process-group timeout,
what every rank must agree on before training, and the run's spread as metrics.json records it.

Launch: ``trainer.devices=N trainer.strategy=ddp`` (Lightning re-runs the command once per extra device, with
rank 0's output directory), torchrun or SLURM's srun (Lightning reads their environment; see
docs/training.md, "Several GPUs and nodes").
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from twotower.losses import SoftmaxLoss

# keys of the ``trainer`` config that are ours, not arguments of pl.Trainer
TRAINER_EXTRA_KEYS = ("process_group_timeout_s",)


def build_strategy(strategy: Any, timeout_s: float | None) -> Any:
    """``trainer.strategy`` as Lightning takes it; the DDP family (``ddp``, ``ddp_spawn``, ...) with the
    process-group timeout (a rank that failed or disagrees ends the others' waits in a collective or at the
    rendezvous after ``timeout_s`` instead of hanging), a static graph and no buffer broadcasts."""
    if not isinstance(strategy, str) or timeout_s is None:
        return strategy
    from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry

    entry = dict.get(StrategyRegistry, strategy)  # the registry entry (its own .get builds the strategy)
    if entry is None or not issubclass(entry["strategy"], DDPStrategy):
        return strategy
    params = dict(entry["init_params"])
    # the parameters a run's data leaves unused (the event embedding of a log without event types, ...)
    # are the same every step: a static graph finds them once, where DDP would otherwise refuse them
    params.setdefault("static_graph", not params.get("find_unused_parameters", False))
    # the module's buffers (item categories, logQ frequencies) never change in training: broadcasting them in
    # every forward is a collective per validation batch, which would hang ranks with uneven query shares
    params.setdefault("broadcast_buffers", False)
    return entry["strategy"](**params, timeout=timedelta(seconds=float(timeout_s)))


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    """The configured pl.Trainer. The datamodule cuts every rank's share itself (the same number of
    length-grouped batches on every rank), so Lightning must not replace its samplers."""
    trainer_cfg = {k: v for k, v in cfg.trainer.items() if k not in TRAINER_EXTRA_KEYS}
    timeout_s = cfg.trainer.get("process_group_timeout_s")
    strategy = build_strategy(trainer_cfg.pop("strategy", "auto"), timeout_s)
    return hydra.utils.instantiate(
        trainer_cfg,
        strategy=strategy,
        callbacks=callbacks,
        logger=loggers or False,
        use_distributed_sampler=False,
    )


def settings_fingerprint(cfg: DictConfig) -> dict[str, str]:
    """What every rank must run with: the output directory (torchrun and srun start each rank with its own
    clock: a timestamped default differs) and a digest of each training section of the config."""
    out = {"paths.output_dir": str(cfg.paths.output_dir), "ckpt_path": str(cfg.get("ckpt_path"))}
    for key in ("seed", "model", "datamodule", "trainer"):
        value = cfg.get(key)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        text = json.dumps(value, sort_keys=True, default=str)
        out[key] = hashlib.sha256(text.encode()).hexdigest()[:12]
    return out


def distributed_summary(trainer: pl.Trainer, loss: SoftmaxLoss, n_items: int) -> dict[str, Any]:
    """How the run was spread: recorded in metrics.json."""
    world = int(trainer.world_size)
    return {
        "world_size": world,
        "num_nodes": int(trainer.num_nodes),
        "strategy": type(trainer.strategy).__name__,
        "cross_rank_negatives": bool(
            world > 1 and loss.cross_rank_negatives and not loss.uses_full_softmax(n_items)
        ),
    }
