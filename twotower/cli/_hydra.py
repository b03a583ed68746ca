"""The one ``@hydra.main`` the Hydra commands share: version base and the absolute config directory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hydra

from twotower.config import CONFIG_DIR


def hydra_app(config_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@hydra.main`` over ``conf/<config_name>.yaml``.

    Hydra names the job (``hydra.job.name``: log file, ``--help`` title) after the module that defines the
    decorated function (``twotower.cli.train`` -> ``train``) or, under ``python -m``, after its file: the
    same name either way, and the same as the old ``scripts/train.py`` gave.
    """
    return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
