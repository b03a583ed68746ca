"""Campaign audiences into Parquet: `twotower-audience bundle=BUNDLE items=[50,181] k=100 out=FILE.parquet`.

Serving side: imports no torch (the bundle's ONNX user tower encodes the users, FAISS ranks them).
Users and their histories come from where batch scoring takes them (`serving.batch_job.load_users`): the
bundle's stored histories by default, a log file (`histories=`) or a serving history store (`state_dir=`).
"""

from __future__ import annotations

import json
import os

from omegaconf import DictConfig, ListConfig, OmegaConf

from serving.audience import UserIndex, write_audiences
from serving.batch_job import honour_erasures, load_users, profiles_for
from serving.recommender import Recommender
from serving.settings import Settings
from twotower.cli._hydra import hydra_app


def item_ids(cfg: DictConfig) -> list[str]:
    """``items=[...]`` and/or the ids of ``items_file`` (one per line), as text."""
    items = cfg["items"]  # cfg.items is DictConfig.items()
    given = (
        OmegaConf.to_container(items) if isinstance(items, ListConfig) else [] if items is None else [items]
    )
    if cfg.items_file:
        with open(cfg.items_file) as handle:
            given += [line.strip() for line in handle if line.strip()]
    if not given:
        raise ValueError("no items: give items=[ID,...] or items_file=FILE")
    return [str(i) for i in given]


@hydra_app("audience")
def main(cfg: DictConfig) -> None:
    items = item_ids(cfg)
    rec = Recommender.load(cfg.bundle, threads=cfg.threads or os.cpu_count() or 1)
    users, histories = load_users(
        rec, users_file=cfg.users, histories_file=cfg.histories, state_dir=cfg.state_dir
    )
    key = Settings.from_env().pseudonym_key
    from_store = bool(cfg.state_dir) and not cfg.histories  # load_users reads a log first
    users, histories = honour_erasures(users, histories, cfg.erasures, from_store, key)
    profiles = profiles_for(rec, users, cfg.state_dir if from_store else None, key)
    index = UserIndex.build(rec, users, histories, features=profiles)
    summary = write_audiences(index, items, cfg.k, cfg.out, exclude_seen=cfg.exclude_seen)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
