"""Every config group instantiates; every experiment composes."""

from __future__ import annotations

import hydra
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import ML100K, TINY_DATA, compose_config
from twotower.config import CONFIG_DIR
from twotower.config_check import ConfigError, check_config, type_errors
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
    check_config(cfg)  # every value of the right type


@pytest.mark.parametrize("group", ["data", "datamodule", "model", "trainer", "eval"])
def test_every_preset_passes_the_type_check(group, tmp_path):
    for name in options(group):
        check_config(compose_config([f"{group}={name}"], tmp_path))


def test_the_type_table_covers_every_numeric_and_boolean_key():
    """Every int, float or bool setting of trainer, data, datamodule, model and eval in every preset and
    experiment is checked (a new key needs its line in config_check.EXPECTED)."""
    from omegaconf import DictConfig

    from twotower.config_check import EXPECTED

    def leaves(node: DictConfig, prefix: str):
        for key in node:
            child, path = node._get_node(key), f"{prefix}.{key}"
            if isinstance(child, DictConfig):
                yield from leaves(child, path)
            elif key != "_partial_" and isinstance(child._value(), (bool, int, float)):
                yield path

    overrides = [f"experiment={name}" for name in options("experiment")]
    overrides += [f"{g}={n}" for g in ("data", "datamodule", "model", "trainer", "eval") for n in options(g)]
    unchecked = set()
    for override in overrides:
        cfg = compose_config([override])
        for section in ("trainer", "data", "datamodule", "model", "eval"):
            unchecked |= {path for path in leaves(cfg[section], section) if path not in EXPECTED}
    assert not unchecked


@pytest.mark.parametrize(
    ("overrides", "key", "value"),
    [
        (["eval.val_max_users=2000"], "eval.val_max_users", 2000),
        (["trainer.val_check_interval=0.5"], "trainer.val_check_interval", 0.5),
        (["data=parquet", "data.path=x", "data.loader.wait_s=60"], "data.loader.wait_s", 60),
    ],
)
def test_documented_overrides_compose_without_plus(overrides, key, value, tmp_path):
    """Keys docs/training.md gives as plain `key=value` overrides exist in the config (Hydra refuses a plain
    override of a key the config lacks); their defaults are the code's."""
    cfg = compose_config(overrides, tmp_path)
    assert OmegaConf.select(cfg, key) == value
    check_config(cfg)


def test_defaults_of_the_documented_keys_are_the_codes(tmp_path):
    import inspect

    import pytorch_lightning as pl

    from twotower.data.parquet import stream_log

    cfg = compose_config(["data=parquet", "data.path=x"], tmp_path)
    assert cfg.data.loader.wait_s == inspect.signature(stream_log).parameters["wait_s"].default
    assert (
        cfg.trainer.val_check_interval
        == inspect.signature(pl.Trainer).parameters["val_check_interval"].default
    )
    assert compose_config([], tmp_path).eval.val_max_users is None  # every validation user, as before


BAD_TYPES = ["trainer.max_epochs=abc", "data.min_events=three", "datamodule.batch_size=big"]


def test_wrong_types_are_named_before_any_data_is_read(tmp_path):
    """The review's three overrides: one error naming every key, its value and the type it needs, raised by
    train() before the (missing) data file is opened or the output directory is made."""
    from twotower.train import train

    out = tmp_path / "out"
    cfg = compose_config(["data=csv", f"data.path={tmp_path / 'missing.csv'}", *BAD_TYPES], out)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    message = str(error.value)
    for line in ("trainer.max_epochs='abc': expected an integer", "data.min_events='three': expected an integer",
                 "datamodule.batch_size='big': expected an integer"):  # fmt: skip
        assert line in message, message
    assert message.startswith("3 config value(s)") and not out.exists()


@pytest.mark.parametrize(
    ("override", "bad"),
    [
        ("model.optimizer.lr=1e-3", False),
        ("model.optimizer.lr=fast", True),
        ("trainer.max_epochs=5.0", True),
        ("trainer.gradient_clip_val=null", False),
        ("trainer.val_check_interval=100", False),
        ("data.drop_duplicates=maybe", True),
        ("data.loader.n_users=1e3", True),
        ("eval.ks=[10,20]", False),
        ("eval.ks=[10,x]", True),
        ("eval.ks=[]", True),
        ("eval.ease_l2=[10,20.5]", False),
        ("eval.val_max_users=all", True),
        ("datamodule.event_weights={purchase: 3, view: 0.5}", False),
        ("datamodule.event_weights={purchase: lots}", True),
        ("datamodule.event_weights=3", True),
        ("model.net.use_events=1", True),
        ("trainer.devices=auto", False),
        ("trainer.devices=[0,1]", False),
        ("trainer.devices=1.5", True),
        ("trainer.deterministic=warn", False),
        ("+data.split.val_quantile=x", True),
    ],
)
def test_type_check_cases(override, bad, tmp_path):
    errors = type_errors(compose_config([override], tmp_path))
    assert bool(errors) == bad, errors
    if bad:
        assert len(errors) == 1 and errors[0].startswith(override.lstrip("+").split("=")[0] + "="), errors


def test_the_train_command_prints_one_line_naming_the_keys(tmp_path):
    """scripts/train.py: the error line alone (no traceback), exit status 1."""
    import subprocess
    import sys

    from twotower.config import PROJECT_ROOT

    argv = [sys.executable, "scripts/train.py", "data=csv", f"data.path={tmp_path / 'missing.csv'}",
            f"paths.output_dir={tmp_path / 'out'}", *BAD_TYPES]  # fmt: skip
    done = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "error: 3 config value(s) of the wrong type" in done.stderr
    for override in BAD_TYPES:
        assert override.split("=")[0] in done.stderr


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
