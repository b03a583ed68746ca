"""``train(cfg)``: load -> validate -> split -> fit -> evaluate beside baselines -> write metrics and artifacts.

The Hydra entry point (``scripts/train.py``) is a thin wrapper; tests call :func:`train` with a composed config.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from twotower import config as _config  # noqa: F401  (registers resolvers)
from twotower.artifacts import MODEL_FILE, save_data_artifacts, save_model, train_counts
from twotower.baselines import candidate_grid, interaction_matrix, skip_reason
from twotower.callbacks import FiniteLossCheck, RanksAgree, ResumableRandomness, resolve_ckpt_path
from twotower.config_check import check_config
from twotower.data.encode import encode_log
from twotower.data.parquet import StreamLog
from twotower.data.schema import EncodedLog, RawLog
from twotower.data.signals import signal_sizes
from twotower.data.splits import Split, make_split
from twotower.data.stats import log_stats
from twotower.datamodule import TwoTowerDataModule
from twotower.ddp import build_trainer, distributed_summary, settings_fingerprint
from twotower.distributed import launched_as_rank_zero
from twotower.evaluate import MAX_BATCH_SCORES, ModelScorer, auto_chunk, best_on_validation, evaluate_scorer
from twotower.malloc import keep_freed_memory, return_freed_memory
from twotower.metrics import exposure_by_decile, user_popularity
from twotower.model import ModelConfig, TwoTower
from twotower.served import ServedEvaluator, served_results
from twotower.tracking import log_config, log_results

log = logging.getLogger(__name__)


# The in-memory datamodule, swapped for its streaming twin (same arguments) when the loader streamed the log.
DEFAULT_DATAMODULE = "twotower.datamodule.TwoTowerDataModule"
STREAM_DATAMODULE = "twotower.data.stream.StreamDataModule"

# Keys of the ``data`` config that prepare the loaded log; every other key is an argument of its loader.
PREPARE_KEYS = ("loader", "min_events", "drop_duplicates", "split")


def load_raw(data_cfg: DictConfig) -> RawLog:
    """The configured loader (``data.loader``) called with its arguments: its own keys and every key of ``data``
    but :data:`PREPARE_KEYS`, so that `data=csv data.path=events.csv` sets each argument once."""
    args = {k: v for k, v in data_cfg.items() if k not in PREPARE_KEYS}
    return hydra.utils.instantiate(data_cfg.loader, **args)


def load_data(cfg: DictConfig) -> tuple[EncodedLog, Split]:
    """Load with the configured loader, validate/encode, and split."""
    raw = load_raw(cfg.data)
    if isinstance(raw, StreamLog):  # data=parquet, streamed: already encoded, split and cut into shards
        log.info("data %s; report %s", raw.summary(), raw.report.as_dict())
        return raw, raw.split
    data = encode_log(raw, min_events=cfg.data.min_events, drop_duplicates=cfg.data.drop_duplicates)
    split_cfg = OmegaConf.to_container(cfg.data.split, resolve=True)
    split = make_split(data, **split_cfg)
    log.info("data %s; report %s", data.summary(), data.report.as_dict())
    return data, split


def build_net(net_cfg: Mapping[str, Any], data: EncodedLog) -> TwoTower:
    """The TwoTower of ``model.net`` with catalog sizes from the data; features the data lacks are switched off."""
    sizes = {"n_items": data.n_items, "n_categories": data.n_categories, "n_events": data.n_events,
             "max_categories": int(data.item_categories.shape[1])}  # fmt: skip
    config = ModelConfig.from_dict({**net_cfg, **sizes})
    switches = {k: getattr(config, k) for k in ("use_queries", "use_context", "use_user_features")}
    config = replace(config, **signal_sizes(data, **switches))  # the signals the data carries
    config = replace(
        config,
        use_events=bool(config.use_events and data.n_events > 1),
        use_dwell=bool(config.use_dwell and (data.dwell >= 0).any()),
        use_time=bool(config.use_time and data.has_time),
    )
    return TwoTower(config, torch.from_numpy(data.item_categories))


def _instantiate_dict(section: DictConfig | None) -> list[Any]:
    return [hydra.utils.instantiate(c) for c in (section or {}).values() if c is not None and "_target_" in c]


def build_callbacks(section: DictConfig | None) -> list[pl.Callback]:
    """The configured callbacks, plus the guards every run keeps whatever the config says (``callbacks=none``
    included): a NaN loss stops the run, and a checkpoint resumes as the run it continues."""
    callbacks = _instantiate_dict(section)
    for guard in (FiniteLossCheck, ResumableRandomness):
        if not any(isinstance(c, guard) for c in callbacks):
            callbacks.append(guard())
    return callbacks


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's ``dirpath``, else ``OUT/checkpoints``."""
    dirpath = ((cfg.get("callbacks") or {}).get("model_checkpoint") or {}).get("dirpath")
    return Path(dirpath) if dirpath else Path(cfg.paths.output_dir) / "checkpoints"


def eval_context(cfg: DictConfig, data: EncodedLog, split: Split) -> tuple[dict[str, Any], list[float]]:
    """The evaluation settings every scorer shares (catalog, popularity, cut-offs, categories), and the training
    interactions' exposure by popularity decile (what the data itself shows)."""
    ks = tuple(cfg.eval.ks)
    train_mask = split.train_mask(data)
    user_counts = np.zeros(data.n_items + 1)
    pairs = np.unique(np.stack([data.users[train_mask], data.items[train_mask]]), axis=1)
    np.add.at(user_counts, pairs[1], 1)
    popularity = user_popularity(user_counts[1:], data.n_users)
    data_exposure = exposure_by_decile(data.items[train_mask] - 1, popularity)  # training interactions
    common = {"n_items": data.n_items, "popularity": popularity, "ks": ks, "batch_size": cfg.eval.batch_size,
              "exclude_history": cfg.eval.exclude_history, "categories": data.item_categories[1:],
              **ranking_settings(cfg.eval)}  # fmt: skip
    return common, data_exposure


def ranking_settings(eval_cfg: DictConfig) -> dict[str, Any]:
    """How the evaluation ranks (``eval.ranker``: torch or its numpy twin; the catalog chunking)."""
    return {"ranker": eval_cfg.get("ranker", "torch"), "chunk_items": eval_cfg.get("chunk_items"),
            "max_batch_scores": eval_cfg.get("max_batch_scores", MAX_BATCH_SCORES),
            "num_workers": eval_cfg.get("num_workers", 0)}  # fmt: skip


def evaluate_all(
    cfg: DictConfig, data: EncodedLog, split: Split, datamodule: TwoTowerDataModule, net: TwoTower
) -> dict[str, Any]:
    """Model and baselines on the same val/test queries; baseline hyper-parameters picked on validation."""
    common, data_exposure = eval_context(cfg, data, split)
    val_q = datamodule.queries("val", max_users=cfg.eval.get("val_max_users"))  # null: every user
    test_q = datamodule.queries("test", max_users=cfg.eval.test_max_users)
    scorer = ModelScorer(net)
    common["device"] = scorer.device  # the baselines' scores are ranked where the model's are
    results: dict[str, Any] = {
        "val": evaluate_scorer(scorer, val_q, desc="model val", **common),
        "test": evaluate_scorer(scorer, test_q, desc="model test", **common),
        "baselines": {},
        "baseline_params": {},
        "baselines_val": {},
        "data_exposure": data_exposure,
    }
    counts = train_counts(data, split)
    evaluator = ServedEvaluator(cfg, data, scorer, float(net.temperature), counts, common)
    served = served_results(evaluator, cfg, val_q, test_q, results["val"])
    if served is not None:
        results["served"] = served
    train_matrix = interaction_matrix(data, split)
    results["baselines_skipped"] = {}
    for name in cfg.eval.baselines:
        reason = skip_reason(name, data.n_items, cfg.eval.ease_max_items, cfg.eval.get("knn_max_items"))
        if reason is not None:  # too large for this baseline: said in metrics.json, not silently missing
            log.info("baseline %s skipped: %s", name, reason)
            results["baselines_skipped"][name] = reason
            continue
        grid = candidate_grid(name, train_matrix, cfg.eval.knn_neighbors, cfg.eval.ease_l2,
                              cfg.eval.ease_max_items, cfg.eval.ease_grid_max_items)  # fmt: skip
        best, best_val = best_on_validation(name, grid, val_q, **common)
        if best is None:
            continue
        results["baselines"][name] = evaluate_scorer(best, test_q, desc=f"{name} test", **common)
        results["baselines_val"][name] = best_val
        results["baseline_params"][name] = best.params
    return results


def train(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> dict[str, Any]:
    """Train and evaluate; returns the metrics dict and the paths written. ``extra_callbacks``: added to the
    configured ones (a benchmark's timers)."""
    check_config(cfg)  # wrong-typed settings fail here, every one named, before any data is read
    out = Path(cfg.paths.output_dir)
    # a missing checkpoint fails before any work
    resume = resolve_ckpt_path(cfg.get("ckpt_path"), checkpoint_dir(cfg))
    out.mkdir(parents=True, exist_ok=True)
    if launched_as_rank_zero():  # the other ranks of a DDP run write nothing of their own
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)
    keep_freed_memory()

    data, split = load_data(cfg)
    # Objects go in through partials: Hydra would turn dataclass kwargs into configs.
    datamodule_cfg = cfg.datamodule
    if isinstance(data, StreamLog) and datamodule_cfg.get("_target_") == DEFAULT_DATAMODULE:
        datamodule_cfg = OmegaConf.merge(datamodule_cfg, {"_target_": STREAM_DATAMODULE})  # same arguments
    datamodule: TwoTowerDataModule = hydra.utils.instantiate(datamodule_cfg, _partial_=True)(
        data=data, split=split, max_len=cfg.model.net.max_len
    )
    net = build_net(cfg.model.net, data)
    loss = hydra.utils.instantiate(cfg.model.loss)
    loss.set_item_frequencies(datamodule.target_counts())
    module_cfg = {k: v for k, v in cfg.model.items() if k not in ("net", "loss")}
    module = hydra.utils.instantiate(module_cfg, _partial_=True)(net=net, loss=loss)
    if module.eval_chunk_items is None:  # validation walks the catalog as the evaluation does
        ranking = ranking_settings(cfg.eval)
        module.eval_chunk_items = ranking["chunk_items"] or auto_chunk(
            data.n_items, cfg.datamodule.eval_batch_size, ranking["max_batch_scores"]
        )
    callbacks = build_callbacks(cfg.get("callbacks")) + list(extra_callbacks or [])
    callbacks.append(RanksAgree(settings_fingerprint(cfg)))  # under DDP: every rank runs the same settings
    loggers = _instantiate_dict(cfg.get("logger"))
    log_config(loggers, cfg)  # logger=mlflow: the resolved config as params
    trainer = build_trainer(cfg, callbacks, loggers)
    log.info(
        "training %s: %d windows, %d targets, full softmax: %s",
        net.config.encoder, len(datamodule.train_set), datamodule.train_set.n_targets,
        loss.uses_full_softmax(data.n_items),
    )  # fmt: skip

    if resume:
        log.info("resuming from %s", resume)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    train_seconds = time.perf_counter() - start
    if not trainer.is_global_zero:  # DDP: rank 0 alone evaluates and writes the results, once
        log.info("rank %d of %d done training", trainer.global_rank, trainer.world_size)
        return {"metrics": None, "output_dir": str(out), "rank": int(trainer.global_rank)}

    best_epoch = int(trainer.current_epoch) - 1
    checkpoint = trainer.checkpoint_callback
    best_path = getattr(checkpoint, "best_model_path", "") if checkpoint else ""
    if best_path:
        state = torch.load(best_path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        best_epoch = int(state.get("epoch", best_epoch))
        del state  # it holds the optimizer state too: not kept through the evaluation
    release_training_state(trainer)
    net = module.eval_net.cpu().eval()
    save_model(net, out / MODEL_FILE)
    save_data_artifacts(data, split, out / "data", max_len=net.config.max_len)

    # ranked where it trained (the GPU on a GPU run): only ranks and top-k lists come back to the host
    results = evaluate_all(cfg, data, split, datamodule, net.to(trainer.strategy.root_device))
    metrics = {
        "dataset": data.summary(),
        "protocol": split.protocol + "; full-catalog ranking, history excluded, ties count against the model",
        "val": results["val"],
        "test": results["test"],
        **({"served": results["served"]} if "served" in results else {}),
        "baselines": results["baselines"],
        "baselines_skipped": results["baselines_skipped"],  # name -> why it did not run (catalog size)
        "baselines_val": results["baselines_val"],
        "data_exposure_by_popularity_decile": results["data_exposure"],
        "baseline_params": results["baseline_params"],
        "train_seconds": round(train_seconds, 2),  # of this run only when it resumed another
        "resumed_from": resume,
        "best_epoch": best_epoch,
        "epochs_run": int(trainer.current_epoch),
        "train_targets_per_epoch": datamodule.train_set.n_targets,
        "device": str(trainer.strategy.root_device),
        **distributed_summary(trainer, loss, data.n_items),
        "precision": str(trainer.precision),
        "model": net.config.to_dict(),
        "data_report": data.report.as_dict(),
        "data_stats": log_stats(data, split),  # the log's regime: events per user, ties, rare items
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("wrote %s", out / "metrics.json")
    result = {
        "metrics": metrics,
        "output_dir": str(out),
        "checkpoint": best_path,
        "model": str(out / MODEL_FILE),
    }
    if cfg.get("export"):
        result["bundle"] = export_run(cfg, out)
    log_results(loggers, result)  # logger=mlflow: final metrics, bundle
    return result


def release_training_state(trainer: pl.Trainer) -> None:
    """Drop what only training needs (optimizer moments: two more copies of every embedding table) and hand
    the freed heap back, so that evaluating a large catalog does not stack on the training peak."""
    trainer.strategy.optimizers = []
    trainer.strategy.lr_scheduler_configs = []
    gc.collect()
    return_freed_memory()


def export_run(cfg: DictConfig, out: Path) -> str:
    """``export=true``: write the serving bundle into ``OUT/bundle`` with the configured index."""
    from serving.core.index import IndexSpec
    from twotower.export import export_bundle

    spec = IndexSpec.from_dict(cfg.get("index"))
    rerank = OmegaConf.to_container(cfg.rerank, resolve=True) if cfg.get("rerank") else None
    export_bundle(out, out / "bundle", spec, rerank)
    return str(out / "bundle")


def format_summary(metrics: dict[str, Any]) -> str:
    """A small table of the test metrics: model beside each baseline."""
    keys = ["recall@10", "ndcg@10", "recall@100", "mrr", "coverage@10", "novelty@10"]
    rows = [("model", metrics["test"])]
    if "served" in metrics:  # the model with the session-intent re-rank, as the bundle serves it
        rows.append(("served", metrics["served"]["test"]))
    rows += list(metrics["baselines"].items())
    lines = [f"{'':12s}" + "".join(f"{k:>13s}" for k in keys)]
    lines += [f"{name:12s}" + "".join(f"{vals[k]:13.4f}" for k in keys) for name, vals in rows]
    d = metrics["dataset"]
    head = f"{d['name']}: {d['users']} users, {d['items']} items, {d['interactions']} interactions; "
    head += f"trained {metrics['train_seconds']:.1f}s, best epoch {metrics['best_epoch']}"
    return "\n".join([head, *lines])
