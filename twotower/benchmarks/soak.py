"""Load and soak of the real server on loopback, driven by wrk (twotower/benchmarks/wrk.py).

Three phases against one ``python -m serving`` subprocess (its own state dir, a bearer token):

1. capacity: wrk at full speed over ``connections`` connections with the read/write mix;
2. fair writes: ``writes`` sequential ``POST /events`` from one Python thread, timed, alone and while wrk
   reads at full speed over the same connections (alternating in ``rounds``): the loaded p50 over the
   unloaded p50 says whether reads starve writes;
3. soak: the mix at ``rate_share`` of the capacity for ``seconds``, in windows of ``window`` seconds (one wrk
   run each): p50 / p99 / errors per window and the server's RSS every second.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from serving.core.bundle import HISTORIES, ITEM_IDS
from twotower.benchmarks import wrk
from twotower.benchmarks.servers import free_port, wait_ready
from twotower.benchmarks.service import machine

log = logging.getLogger(__name__)

TARGETS = {"write_p50_ratio": 5.0, "rss_growth_mb": 50.0, "p99_over_first_window": 2.0}
PHASES = ("unloaded", "loaded")


def bodies(bundle: Path, n: int = 500, seed: int = 0) -> tuple[dict[str, list[dict]], list[dict]]:
    """Request bodies from the bundle's ids: wrk's mix (by stored user, by given history, events) and the
    fair-write writer's ``2 n`` events (its unloaded and loaded halves)."""
    rng = np.random.default_rng(seed)
    items = json.loads((bundle / ITEM_IDS).read_text())
    users = sorted(pd.read_parquet(bundle / HISTORIES, columns=["user_id"])["user_id"].astype(str).unique())
    if not users or not items:
        raise ValueError(f"{bundle}: no stored users or no items to build requests from")

    def user() -> str:
        return users[rng.integers(len(users))]

    def item() -> str:
        return items[rng.integers(len(items))]

    def event() -> dict:
        return {"events": [{"user_id": user(), "item_id": item(), "event": None}]}

    mix = {"by_user": [{"user_id": user(), "k": 10} for _ in range(n)],
           "by_history": [{"history": [item() for _ in range(rng.integers(1, 21))], "k": 10} for _ in range(n)],
           "writes": [event() for _ in range(2 * n)]}  # fmt: skip
    return mix, [event() for _ in range(2 * n)]


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler:
    """The server's RSS every ``period`` seconds on a thread, at most ``max_samples`` samples."""

    def __init__(self, pid: int, period: float = 1.0, max_samples: int = 100_000):
        self.pid, self.period, self.max_samples = pid, period, max_samples
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            try:
                self.samples.append((round(time.perf_counter() - self._t0, 3), round(rss_mb(self.pid), 2)))
            except OSError:  # the server is gone: wrk's errors tell the rest
                return
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextmanager
def server(bundle: Path, token: str, log_path: Path, source: Path | None = None, ready_s: float = 120.0):
    """``python -m serving`` on a free loopback port with a fresh state dir; yields (process, base url).

    ``source``: a source tree to run the server from instead of the installed one (a git worktree of another
    commit): it leads PYTHONPATH, and the server runs in its state dir so the current directory adds nothing.
    """
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TWOTOWER_API_TOKEN": token}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="twotower-soak-state-") as state, open(log_path, "w") as out:
        args = [sys.executable, "-m", "serving", "--bundle", str(bundle), "--state-dir", state,
                "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        proc = subprocess.Popen(args, cwd=state, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(proc, f"{url}/readyz", ready_s, f"; see {log_path}")
            yield proc, url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def latency_figures(seconds: list[float], errors: int) -> dict:
    ms = np.asarray(seconds) * 1e3
    if not len(ms):
        return {"n": 0, "errors": errors, "p50_ms": None, "p99_ms": None}
    return {"n": len(ms), "errors": errors, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}  # fmt: skip


def write_events(url: str, token: str, events: list[dict], max_seconds: float) -> tuple[list[float], int]:
    """``POST /events`` one after another on one keep-alive connection, each timed to its answer."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    times, errors, deadline = [], 0, time.monotonic() + max_seconds
    try:
        for body in events:
            if time.monotonic() > deadline:
                break
            payload = json.dumps(body)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/events", payload, headers)
                answer = conn.getresponse()
                answer.read()
            except OSError:
                errors += 1
                conn.close()
                continue
            times.append(time.perf_counter() - t0)
            errors += not 200 <= answer.status < 300
    finally:
        conn.close()
    return times, errors


def fair_writes(url: str, token: str, events: list[dict], read_args: list[str], rounds: int = 2) -> dict:
    """Event writes timed alone and while wrk (``read_args``) reads at full speed, the two alternating over
    ``rounds`` so that a change in the machine's speed (other work on it) hits both alike."""
    per = max(1, len(events) // (2 * rounds))
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    errors = dict.fromkeys(PHASES, 0)
    reads = []
    for r in range(rounds):
        for j, phase in enumerate(PHASES):
            chunk = events[(2 * r + j) * per : (2 * r + j + 1) * per]
            load = wrk.start(read_args) if phase == "loaded" else None  # stopped when the writer is done
            try:
                if load:
                    time.sleep(1.0)  # the read load reaches its pace
                t, e = write_events(url, token, chunk, max_seconds=60)
            finally:
                if load:
                    reads.append(wrk.stop(load))
            times[phase] += t
            errors[phase] += e
    out = {phase: latency_figures(times[phase], errors[phase]) for phase in PHASES}
    seconds = sum(r["duration_s"] for r in reads)
    out["loaded"]["reads"] = {"rps": sum(r["requests"] for r in reads) / seconds if seconds else 0.0,
                              **{key: sum(r[key] for r in reads) for key in ("requests", "errors", "writes")}}  # fmt: skip
    alone, loaded = out["unloaded"], out["loaded"]
    ok = alone["n"] and loaded["n"]
    out["p50_ratio"] = loaded["p50_ms"] / alone["p50_ms"] if ok else None
    out["p99_ratio"] = loaded["p99_ms"] / alone["p99_ms"] if ok else None
    out["rounds"] = rounds
    return out


def soak_figures(windows: list[dict], rss: list[tuple[float, float]]) -> dict:
    """Errors, RSS growth (last sample over the first) and the worst later-window p99 over the first's."""
    first_p99 = windows[0]["p99_ms"] if windows else 0.0
    later = [w["p99_ms"] for w in windows[1:]]
    return {"requests": sum(w["requests"] for w in windows), "errors": sum(w["errors"] for w in windows),
            "rss_start_mb": rss[0][1] if rss else None, "rss_max_mb": max(r for _, r in rss) if rss else None,
            "rss_growth_mb": rss[-1][1] - rss[0][1] if rss else None,
            "worst_p99_over_first": max(later) / first_p99 if later and first_p99 else None}  # fmt: skip


def targets(fair: dict, soak: dict) -> dict[str, bool | None]:
    """Pass / fail of the issue's targets (None: not measured, e.g. a soak of one window)."""
    ratio, growth, p99 = fair.get("p50_ratio"), soak.get("rss_growth_mb"), soak.get("worst_p99_over_first")
    return {"write_p50_loaded_within_5x_unloaded": None if ratio is None else ratio <= TARGETS["write_p50_ratio"],
            "soak_zero_errors": soak.get("errors") == 0,
            "soak_rss_growth_within_50mb": None if growth is None else growth <= TARGETS["rss_growth_mb"],
            "soak_p99_within_2x_first_window": None if p99 is None else p99 <= TARGETS["p99_over_first_window"]}  # fmt: skip


def run(
    bundle: str | Path, out: str | Path, *, seconds: float = 60.0, window: float = 10.0, connections: int = 8,
    write_share: float = 0.1, capacity_seconds: float = 10.0, writes: int = 200, rate_share: float = 0.7,
    warmup_seconds: float = 2.0, rounds: int = 2, source: str | Path | None = None,
) -> dict:  # fmt: skip
    """All three phases; writes ``out/soak.json`` (and the wrk script, its data, the server's log)."""
    if not wrk.available():
        raise RuntimeError("wrk not found: apt-get install wrk")
    if not 0.0 <= write_share <= 1.0:
        raise ValueError(f"write_share must be in [0, 1], got {write_share}")
    bundle, out, window = Path(bundle), Path(out), max(1, round(window))  # wrk runs whole seconds
    token = secrets.token_urlsafe(24)
    mix, writer_events = bodies(bundle, n=max(writes, 100))
    script, data = wrk.write_script(out, mix)
    load = {"connections": connections, "write_share": write_share}
    n_windows = max(1, round(seconds / window))
    result: dict = {"machine": machine(), "bundle": str(bundle), "server_source": str(source or "installed"),
                    "load_generator": "wrk", "loadavg_start": os.getloadavg(), **load, "window_s": window,
                    "rate_share": rate_share}  # fmt: skip
    with server(bundle, token, out / "server.log", Path(source) if source else None) as (proc, url):

        def wrk_args(secs: float, **kw) -> list[str]:
            return wrk.command(url, script, data, token, seconds=secs, **{**load, **kw})

        wrk.run(wrk_args(warmup_seconds), timeout=warmup_seconds + 30)
        capacity = wrk.run(wrk_args(capacity_seconds), timeout=capacity_seconds + 30)
        log.info("capacity: %.0f requests/s", capacity["rps"])

        fair = fair_writes(url, token, writer_events[: 2 * writes], wrk_args(120, write_share=0.0), rounds)
        log.info(
            "event write p50: %s ms alone, %s ms under reads", *(_num(fair[k]["p50_ms"]) for k in PHASES)
        )

        rate = rate_share * capacity["rps"]
        windows = []
        with RssSampler(proc.pid) as rss:
            for i in range(n_windows):
                figures = wrk.run(wrk_args(window, rate=rate), timeout=window + 30)
                windows.append({"window": i, **figures})
                log.info("soak window %d: %.0f req/s, p99 %.1f ms", i, figures["rps"], figures["p99_ms"])
    soak = {"target_rps": rate, "windows": windows, "rss_mb": rss.samples,
            **soak_figures(windows, rss.samples)}  # fmt: skip
    soak["achieved_rps"] = soak["requests"] / sum(w["duration_s"] for w in windows)
    result.update(capacity=capacity, fair_writes=fair, soak=soak, targets=targets(fair, soak),
                  loadavg_end=os.getloadavg())  # fmt: skip
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    return result


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary(result: dict) -> str:
    """A few lines for the terminal."""
    fair, soak = result["fair_writes"], result["soak"]
    alone, loaded = fair["unloaded"], fair["loaded"]
    lines = [
        f"capacity: {result['capacity']['rps']:.0f} requests/s ({result['connections']} connections, "
        f"{result['write_share']:.0%} writes)",
        f"event write p50 / p99: {_num(alone['p50_ms'])} / {_num(alone['p99_ms'])} ms alone, "
        f"{_num(loaded['p50_ms'])} / {_num(loaded['p99_ms'])} ms under {loaded['reads']['rps']:.0f} reads/s: "
        f"p50 x{_num(fair['p50_ratio'], 1)}",
        f"soak: {soak['achieved_rps']:.0f} of {soak['target_rps']:.0f} requests/s target, {soak['errors']} errors, "
        f"RSS {_num(soak['rss_start_mb'], 0)} MB, growth {_num(soak['rss_growth_mb'], 1)} MB",
    ]
    lines += [f"  window {w['window']}: {w['rps']:.0f} req/s, p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms, "
              f"{w['errors']} errors, {w['missed']} slots missed" for w in soak["windows"]]  # fmt: skip
    marks = {True: "PASS", False: "FAIL", None: "n/a "}
    return "\n".join(lines + [f"{marks[ok]} {name}" for name, ok in result["targets"].items()])
