"""The types of a training config's numeric and boolean settings, checked when ``train()`` starts.

Hydra keeps whatever an override spells (``trainer.max_epochs=abc`` is the string "abc"), and a wrong type
otherwise fails late (after the data has loaded, or deep inside Lightning) with an error that names no key.
:func:`check_config` reads every key of :data:`EXPECTED` the config has and raises one :class:`ConfigError`
naming every bad key, its value and the type it needs, before any data is read. Keys a config lacks are
skipped: the table covers every data, model and trainer preset, and what a preset leaves out keeps its default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue


class ConfigError(ValueError):
    """A config value of the wrong kind; the message names every such key."""


@dataclass(frozen=True)
class Kind:
    """What a key holds: ``expected`` is how the error words it."""

    expected: str
    accepts: Callable[[Any], bool]

    def or_null(self) -> Kind:
        return Kind(f"{self.expected} or null", lambda v: v is None or self.accepts(v))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, tuple, ListConfig)) and len(v) > 0 and all(check(x) for x in v)


INT = Kind("an integer", _is_int)
NUMBER = Kind("a number", _is_number)
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
INTS = Kind("a non-empty list of integers, e.g. [10, 20]", _list_of(_is_int))
NUMBERS = Kind("a non-empty list of numbers, e.g. [50, 100.0]", _list_of(_is_number))
WEIGHTS = Kind(
    "a mapping of event names to numbers, e.g. {purchase: 3, view: 0.5}",
    lambda v: isinstance(v, (Mapping, DictConfig)) and all(_is_number(x) for x in v.values()),
)
STREAM = Kind("true, false or auto", lambda v: isinstance(v, bool) or v == "auto")
DETERMINISTIC = Kind("true, false or warn", lambda v: isinstance(v, bool) or v == "warn")
DEVICES = Kind(
    "a count, a list of device indices or a string such as auto",
    lambda v: _is_int(v) or isinstance(v, str) or _list_of(_is_int)(v),
)


def _section(prefix: str, kinds: dict[str, Kind]) -> dict[str, Kind]:
    return {f"{prefix}.{key}": kind for key, kind in kinds.items()}


# Dotted key -> kind. Keys of every preset in conf/ (and a few Lightning arguments an override may add).
EXPECTED: dict[str, Kind] = {
    "seed": INT,
    **_section("trainer", {
        "min_epochs": INT, "max_epochs": INT, "max_steps": INT, "num_nodes": INT,
        "process_group_timeout_s": NUMBER, "gradient_clip_val": NUMBER.or_null(),
        "check_val_every_n_epoch": INT.or_null(), "val_check_interval": NUMBER.or_null(),
        "log_every_n_steps": INT, "num_sanity_val_steps": INT, "accumulate_grad_batches": INT,
        "limit_train_batches": NUMBER.or_null(), "limit_val_batches": NUMBER.or_null(),
        "enable_progress_bar": BOOL, "enable_checkpointing": BOOL, "deterministic": DETERMINISTIC,
        "devices": DEVICES,
    }),
    **_section("data", {
        "min_events": INT, "drop_duplicates": BOOL, "header": BOOL, "hour_of_week": BOOL,
        "rating_as_event": BOOL, "stream": STREAM, "stream_min_rows": INT, "memory_mb": NUMBER,
        "min_partitions": INT, "batch_rows": INT, "eval_max_users": INT.or_null(),
        "split.val_quantile": NUMBER, "split.test_quantile": NUMBER, "items.header": BOOL, "users.header": BOOL,
    }),
    **_section("data.loader", {  # the synthetic generator's, data.reduce's and data=parquet's own settings
        "n_users": INT, "n_items": INT, "n_categories": INT, "mean_events": NUMBER, "min_events": INT,
        "max_events": INT, "zipf_exponent": NUMBER, "session_length": NUMBER, "search_prob": NUMBER,
        "time_granularity_s": NUMBER.or_null(), "seed": INT, "max_len": INT, "wait_s": NUMBER,
    }),
    **_section("datamodule", {
        "batch_size": INT, "eval_batch_size": INT, "num_workers": INT, "val_max_users": INT.or_null(),
        "group_by_length": BOOL, "shuffle_ties": BOOL, "start_targets": INT, "seed": INT, "pin_memory": BOOL,
        "event_weights": WEIGHTS.or_null(),
    }),
    **_section("model", {
        "eval_k": INT, "ema_decay": NUMBER.or_null(), "id_prior_events": NUMBER.or_null(),
        "eval_chunk_items": INT.or_null(), "optimizer.lr": NUMBER, "optimizer.weight_decay": NUMBER,
    }),
    **_section("model.net", {
        "dim": INT, "max_len": INT, "num_layers": INT, "num_heads": INT, "dropout": NUMBER,
        "temperature": NUMBER, "query_buckets": INT, "max_query_tokens": INT, "use_events": BOOL,
        "use_dwell": BOOL, "use_time": BOOL, "use_queries": BOOL, "use_context": BOOL,
        "use_user_features": BOOL, "normalize": BOOL, "learn_temperature": BOOL,
    }),
    **_section("model.loss", {
        "full_softmax_max_items": INT, "num_uniform_negatives": INT, "label_smoothing": NUMBER,
        "logq_correction": BOOL, "mask_accidental_hits": BOOL, "mask_history": BOOL,
        "cross_rank_negatives": BOOL,
    }),
    **_section("eval", {
        "ks": INTS, "batch_size": INT, "exclude_history": BOOL, "test_max_users": INT.or_null(),
        "val_max_users": INT.or_null(), "chunk_items": INT.or_null(), "max_batch_scores": INT,
        "num_workers": INT, "knn_neighbors": INTS, "ease_l2": NUMBERS, "ease_max_items": INT,
        "ease_grid_max_items": INT, "knn_max_items": INT.or_null(),
    }),
}  # fmt: skip


def type_errors(cfg: DictConfig, expected: Mapping[str, Kind] = EXPECTED) -> list[str]:
    """One line per key of ``expected`` whose value in ``cfg`` is of the wrong kind (absent keys pass)."""
    errors = []
    for key, kind in expected.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            continue
        try:
            value = node[leaf]
        except MissingMandatoryValue:  # `???`: Hydra's own error names it where it is read
            continue
        if not kind.accepts(value):
            shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
            errors.append(f"{key}={shown!r}: expected {kind.expected}")
    return errors


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming every numeric or boolean key of the wrong type in ``cfg``."""
    errors = type_errors(cfg)
    if errors:
        lines = "\n  ".join(errors)
        raise ConfigError(f"{len(errors)} config value(s) of the wrong type:\n  {lines}")
