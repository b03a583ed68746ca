"""The load and soak script: its figures and targets, its server, and a few seconds of every phase with wrk."""

from __future__ import annotations

import json

import pytest

from twotower.benchmarks import soak, wrk

needs_wrk = pytest.mark.skipif(not wrk.available(), reason="wrk not installed (apt-get install wrk)")


def window(p99: float, errors: int = 0) -> dict:
    return {"requests": 100, "errors": errors, "p99_ms": p99, "duration_s": 1.0}


def test_lua_literals_escape_quotes_and_backslashes_and_refuse_non_ascii():
    assert wrk.lua_string(json.dumps({"user_id": 'a"b\\c'})) == r'"{\"user_id\": \"a\\\"b\\\\c\"}"'
    with pytest.raises(ValueError):
        wrk.lua_string("é")


def test_wrk_summary_is_parsed_with_rate_and_every_kind_of_error():
    figures = {"requests": 50, "duration_s": 2.0, "non2xx": 1, "writes": 5, "socket_errors": 2, "timeouts": 3,
               "p50_ms": 1.0, "p99_ms": 4.0, "max_ms": 9.0, "missed": 0, "max_lag_ms": 0.5}  # fmt: skip
    out = wrk.parse(f"Running 2s test\n{wrk.MARKER}{json.dumps(figures)}\n")
    assert out["rps"] == 25.0 and out["errors"] == 6
    with pytest.raises(RuntimeError, match="no summary"):
        wrk.parse("Running 2s test\n")


def test_fixed_rate_command_splits_the_rate_over_wrk_threads():
    args = wrk.command("http://127.0.0.1:1", "s.lua", "d.lua", "T", connections=8, seconds=0.4,
                       write_share=0.1, rate=300, threads=2)  # fmt: skip
    assert args[:4] == ["wrk", "-t2", "-c8", "-d1s"]
    assert args[-4:] == ["d.lua", "T", "0.1", "150.0"]


def test_soak_figures_compare_later_windows_with_the_first_and_rss_with_its_start():
    figures = soak.soak_figures([window(10.0), window(15.0), window(25.0, errors=2)], [(0, 200.0), (1, 260.0),
                                                                                     (2, 230.0)])  # fmt: skip
    assert figures["errors"] == 2 and figures["requests"] == 300
    assert figures["worst_p99_over_first"] == 2.5
    assert figures["rss_growth_mb"] == 30.0 and figures["rss_max_mb"] == 260.0


def test_targets_pass_at_their_bounds_and_fail_past_them():
    fair = {"p50_ratio": 5.0}
    ok = {"errors": 0, "rss_growth_mb": 50.0, "worst_p99_over_first": 2.0}
    assert all(soak.targets(fair, ok).values())
    bad = soak.targets(
        {"p50_ratio": 5.01}, {"errors": 1, "rss_growth_mb": 50.1, "worst_p99_over_first": 2.01}
    )
    assert not any(bad.values())
    assert soak.targets({"p50_ratio": None}, {"errors": 0})["soak_p99_within_2x_first_window"] is None


def test_bodies_use_the_bundles_stored_users_and_items(run_and_bundle):
    bundle = run_and_bundle[1]
    mix, writer = soak.bodies(bundle, n=50)
    items = set(json.loads((bundle / "item_ids.json").read_text()))
    assert {len(mix["by_user"]), len(mix["by_history"]), len(mix["writes"]), len(writer)} == {50, 100}
    assert all(set(b["history"]) <= items and 1 <= len(b["history"]) <= 20 for b in mix["by_history"])
    assert all(e["item_id"] in items for b in mix["writes"] + writer for e in b["events"])


def test_the_server_runs_from_the_source_tree_given(tmp_path, run_and_bundle):
    fake = tmp_path / "src" / "serving"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise SystemExit('fake tree')\n")
    (fake / "__main__.py").write_text("")
    with (
        pytest.raises(RuntimeError, match="server exited"),
        soak.server(run_and_bundle[1], "T", tmp_path / "server.log", source=tmp_path / "src", ready_s=30),
    ):
        pass
    assert "fake tree" in (tmp_path / "server.log").read_text()


@needs_wrk
def test_a_short_soak_runs_every_phase_against_the_real_server(tmp_path, run_and_bundle):
    result = soak.run(run_and_bundle[1], tmp_path, seconds=2, window=1, capacity_seconds=1, writes=20,
                      warmup_seconds=1)  # fmt: skip
    assert json.loads((tmp_path / "soak.json").read_text())["targets"] == result["targets"]
    capacity, fair, run = result["capacity"], result["fair_writes"], result["soak"]
    assert capacity["rps"] > 0 and capacity["errors"] == 0 and capacity["writes"] > 0
    for phase in ("unloaded", "loaded"):
        assert fair[phase]["n"] == 20 and fair[phase]["errors"] == 0 and fair[phase]["p50_ms"] > 0
    assert fair["loaded"]["reads"]["requests"] > 0 and fair["loaded"]["reads"]["writes"] == 0
    assert fair["p50_ratio"] == pytest.approx(fair["loaded"]["p50_ms"] / fair["unloaded"]["p50_ms"])
    assert len(run["windows"]) == 2 and run["errors"] == 0 and len(run["rss_mb"]) >= 1
    assert run["target_rps"] == pytest.approx(0.7 * capacity["rps"])
    assert 0.7 * run["target_rps"] <= run["achieved_rps"] <= 1.15 * run["target_rps"]  # paced, not flat out
    lines = soak.summary(result).splitlines()
    assert lines[0].startswith("capacity: ") and len(lines) == 3 + len(run["windows"]) + len(
        result["targets"]
    )
