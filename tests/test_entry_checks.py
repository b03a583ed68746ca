"""Arguments refused up front, naming the problem: cold_start's NAME=RUN_DIR runs and datamodule.event_weights
(the in-memory and streamed datamodules share one check)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from twotower.artifacts import MODEL_FILE
from twotower.cli import cold_start as cli
from twotower.config import PROJECT_ROOT
from twotower.config_check import ConfigError
from twotower.data.sequences import SequenceArrays, event_weight_table
from twotower.data.stream import ShardStream

EVENTS = ["<other>", "purchase", "view"]


def fake_run(path: Path) -> Path:
    """A directory with the files cold_start reads (their contents are not read before the check)."""
    path.mkdir(parents=True)
    for name in cli.RUN_FILES:
        (path / name).write_text("")
    return path


@pytest.fixture
def no_evaluation(monkeypatch):
    """cold_start must not start: the argument check comes first."""
    import twotower.cold_start

    def refuse(*args, **kwargs):
        raise AssertionError("evaluation started before the arguments were checked")

    monkeypatch.setattr(twotower.cold_start, "cold_start", refuse)


def usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_cold_start_checks_the_files_it_reads():
    assert cli.RUN_FILES[0] == MODEL_FILE


def test_out_as_a_run_is_refused_before_any_evaluation(tmp_path, capsys, no_evaluation):
    """The review's command: `out=F.json` was taken as a run named "out", found missing after evaluating."""
    run = fake_run(tmp_path / "demo")
    err = usage_error([f"demo={run}", f"out={tmp_path / 'cold.json'}"], capsys)
    assert f"out={tmp_path / 'cold.json'}: not a training run" in err
    assert "model.pt" in err and "--out FILE.json" in err, err


@pytest.mark.parametrize(
    ("arg", "expected"),
    [("demo", "expected NAME=RUN_DIR"), ("=x", "expected NAME=RUN_DIR"), ("demo=", "expected NAME=RUN_DIR")],
)
def test_malformed_runs_are_refused(arg, expected, capsys, no_evaluation):
    assert expected in usage_error([arg], capsys)


def test_a_run_without_its_config_or_a_repeated_name_is_refused(tmp_path, capsys, no_evaluation):
    run = fake_run(tmp_path / "a")
    (run / "config.yaml").unlink()
    assert f"a={run}: not a training run (config.yaml missing" in usage_error([f"a={run}"], capsys)
    other = fake_run(tmp_path / "b")
    assert "the name 'b' is given twice" in usage_error([f"b={other}", f"b={other}"], capsys)


def test_good_runs_reach_the_evaluation(tmp_path, monkeypatch, capsys):
    import twotower.cold_start

    seen = {}
    monkeypatch.setattr(
        twotower.cold_start, "cold_start", lambda runs, cuts: seen.update(runs=runs, cuts=cuts)
    )
    runs = {"features": fake_run(tmp_path / "f"), "plain": fake_run(tmp_path / "p")}
    out = tmp_path / "table.json"
    cli.main([f"{name}={path}" for name, path in runs.items()] + ["--out", str(out)])
    assert seen == {"runs": runs, "cuts": twotower.cold_start.CUTS} and out.read_text() == "null"


def test_the_documented_cold_start_commands_parse(tmp_path):
    """Every `scripts/cold_start.py ...` in the docs: its NAME=RUN_DIR arguments are runs and its .json file is
    the --out file (docs/training.md once wrote `out=FILE.json`)."""
    docs = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
    commands = [c for path in docs for c in re.findall(r"`scripts/cold_start\.py ([^`]*)`", path.read_text())]
    assert len(commands) >= 2, commands
    for i, command in enumerate(commands):
        argv = []
        for token in shlex.split(command):
            if token == "...":
                continue
            if "=" in token and not token.startswith("-"):  # a run: point it at a stand-in
                name = token.split("=", 1)[0]
                token = f"{name}={fake_run(tmp_path / f'{i}-{name}')}"
            argv.append(token)
        parser = cli.build_parser()
        args = parser.parse_args(argv)
        runs = cli.parse_runs(parser, args.runs)
        assert runs and (args.out or "").endswith(".json"), command


def test_event_weights_table():
    assert event_weight_table(None, EVENTS) is None and event_weight_table({}, EVENTS) is None
    table = event_weight_table({"purchase": 3, "view": 0}, EVENTS)
    np.testing.assert_array_equal(table, np.array([1.0, 3.0, 0.0], np.float32))


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (
            {"purchse": 3},
            "['purchse'] name no event type of the log; its event types are ['<other>', 'purchase'",
        ),
        ({"view": -1}, "{'view': -1}: each weight must be a finite number >= 0"),
        ({"view": float("nan")}, "each weight must be a finite number >= 0"),
        ({"view": "lots"}, "{'view': 'lots'}: each weight"),
        ({"view": True}, "each weight must be"),
    ],
)
def test_event_weights_are_refused_on_both_paths(weights, expected, tiny_data):
    """The in-memory datamodule's arrays and the streamed shards' batches refuse the same weights."""
    with pytest.raises(ConfigError, match=re.escape(expected)):
        event_weight_table(weights, EVENTS)
    if "purchse" not in weights:  # the same bad value under a name the tiny log has
        weights_here = {tiny_data.event_names[-1]: next(iter(weights.values()))}
    else:
        weights_here = weights
    with pytest.raises(ConfigError, match="datamodule.event_weights"):
        SequenceArrays.from_log(tiny_data, weights_here)
    streamed = SimpleNamespace(entry=Path("."), index={"shards": [{"windows": 4, "targets": 8, "path": "s"}]},
                               has_time=True, event_names=EVENTS)  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(expected)):
        ShardStream(streamed, batch_size=2, event_weights=weights, rank=0, world_size=1)
    assert (
        ShardStream(streamed, batch_size=2, event_weights={"purchase": 2}, rank=0, world_size=1).weights[1]
        == 2
    )
