"""Every config group instantiates; every experiment composes."""

from __future__ import annotations

import hydra
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import ML100K, TINY_DATA, compose_config
from twotower.config import CONFIG_DIR
from twotower.data.schema import RawLog
from twotower.train import build_net, load_raw


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_groups_exist():
    for group in (
        "data",
        "model",
        "trainer",
        "paths",
        "experiment",
        "callbacks",
        "logger",
        "eval",
        "datamodule",
    ):
        assert options(group), group


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_instantiate(name, tmp_path):
    overrides = [f"data={name}"]
    if name == "synthetic":
        overrides += TINY_DATA
    elif name == "csv":
        path = tmp_path / "log.csv"
        path.write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4\n1,4,5\n")
        overrides.append(f"data.path={path}")
    elif name == "movielens":
        (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n1,2,3,2\n1,3,5,3\n")
        overrides.append(f"data.path={tmp_path}")
    elif name == "parquet":  # a small log: read in memory (streamed logs: tests/test_parquet.py)
        import pandas as pd

        pd.DataFrame({"user_id": ["1"] * 3, "item_id": ["2", "3", "4"], "timestamp": [3, 4, 5]}).to_parquet(
            tmp_path / "log.parquet"
        )
        overrides.append(f"data.path={tmp_path / 'log.parquet'}")
    elif name == "ml100k" and not (ML100K / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    cfg = compose_config(overrides, tmp_path / "out")
    raw = load_raw(cfg.data)
    assert isinstance(raw, RawLog) and len(raw.events) > 0


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_instantiate(name, tiny_data):
    cfg = compose_config([f"model={name}"])
    net = build_net(cfg.model.net, tiny_data)
    loss = instantiate(cfg.model.loss)
    module_cfg = {k: v for k, v in cfg.model.items() if k not in ("net", "loss")}
    module = instantiate(module_cfg, _partial_=True)(net=net, loss=loss)
    assert net.config.encoder == cfg.model.net.encoder
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_configs_instantiate(name, tmp_path):
    cfg = compose_config([f"trainer={name}"], tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU here")
    from twotower.ddp import build_trainer  # as train() builds it (trainer.* has keys of ours, too)

    assert build_trainer(cfg, [], []).max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers_instantiate(group, tmp_path):
    for name in options(group):
        cfg = compose_config([f"{group}={name}"], tmp_path)
        for section in (cfg.get(group) or {}).values():
            assert instantiate(section) is not None


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(name, tmp_path):
    cfg = compose_config([f"experiment={name}"], tmp_path)
    assert cfg.task_name == name
    assert hydra.utils.get_class(cfg.model._target_) is not None


@pytest.mark.parametrize(
    ("name", "overrides", "keys"),
    [
        (
            "bench_latency",
            ["n_items=[10,20]"],
            {"n_items", "sweep", "index_base", "indexes", "query_mixture"},
        ),
        ("bench_latency", ["index=ivf_flat"], {"index", "index_base", "sweep"}),  # a conf/index preset
        ("bench_batch", [], {"n_items", "users", "index", "search_values"}),
        (
            "batch_score",
            ["bundle=B", "out=F.parquet"],
            {"k", "chunk_size", "num_shards", "shard", "index_params"},
        ),
        ("export", ["run_dir=R", "out=B"], {"run_dir", "out", "index"}),
    ],
)
def test_script_configs_compose(name, overrides, keys):
    """The scripts' own root configs compose, and their index settings are valid IndexSpec fields."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from serving.core.index import IndexSpec
    from twotower.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    assert keys <= set(cfg)
    for field in ("index", "index_base"):
        if OmegaConf.is_dict(cfg.get(field)):
            IndexSpec.from_dict(cfg[field])


def test_index_presets_name_their_kind_and_list_every_setting():
    """A preset states only what differs from IndexSpec's defaults (its kind); every IndexSpec field is a key
    (null = the default), so that `index.nprobe=12` overrides it without a `+`."""
    from dataclasses import fields

    from serving.core.index import IndexSpec

    names = [f.name for f in fields(IndexSpec)]
    for name in options("index"):
        cfg = compose_config([f"index={name}"])
        assert list(cfg.index) == names
        assert {k: v for k, v in cfg.index.items() if v is not None} == {"kind": name}
        assert IndexSpec.from_dict(cfg.index) == IndexSpec(kind=name)


def test_index_spec_from_dict():
    """None is the default; an unknown key raises unless strict=False (a manifest's entry records the build)."""
    from serving.core.index import IndexSpec

    spec = IndexSpec(kind="ivf_sq", nlist=40, coarse_type="fp16")
    assert IndexSpec.from_dict(spec.to_dict()) == spec
    assert IndexSpec.from_dict(None) == IndexSpec.from_dict({"nprobe": None}) == IndexSpec()
    manifest_entry = {**spec.to_dict(), "factory": "IVF40,SQfp16", "recall@10_vs_exact": 1.0}
    assert IndexSpec.from_dict(manifest_entry, strict=False) == spec
    with pytest.raises(ValueError, match="nprob"):
        IndexSpec.from_dict({"kind": "hnsw", "nprob": 8})
