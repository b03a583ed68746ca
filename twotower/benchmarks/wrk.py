"""wrk (https://github.com/wg/wrk) driven by a Lua script: POST /recommend and POST /events mixed, at full
speed or paced to a fixed rate.

wrk has no fixed-rate mode of its own (wrk2 has, but no distribution packages it); its ``delay()`` hook does
the pacing here: each wrk thread hands out send slots ``1 / rate`` apart on the monotonic clock (LuaJIT's
FFI), and a connection that finishes a request waits for the next free slot. Slots are a fixed schedule, as
arrivals of independent users would be: after a stall the connections catch up on the slots they missed
(``max_lag_ms``: the furthest a send fell behind its slot); slots more than a second late are dropped and
counted (``missed``), so a server too slow for the rate shows as an achieved rate below the target. Latency is
wrk's, from a request's send to its response: time spent behind schedule is in ``max_lag_ms``, not in it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } twotower_timespec;
int clock_gettime(int clk_id, twotower_timespec *tp);
]]
local clock = ffi.new("twotower_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local threads, created = {}, 0
function setup(thread)
  created = created + 1
  thread:set("id", created)
  table.insert(threads, thread)
end

local data, headers, write_share, interval, next_slot
local MAX_LAG_MS = 1000
non2xx, writes, missed, max_lag = 0, 0, 0, 0

-- args: data file (Lua table of JSON bodies), bearer token, write share, requests/s of this thread (0 = max)
function init(args)
  data = dofile(args[1])
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[2]}
  write_share = tonumber(args[3])
  local rate = tonumber(args[4])
  interval = rate > 0 and 1000 / rate or 0
  next_slot = now_ms()
  math.randomseed(id * 7919)
end

local function pick(list) return list[math.random(#list)] end

function request()
  local r = math.random()
  if r < write_share then
    writes = writes + 1
    return wrk.format("POST", "/events", headers, pick(data.writes))
  elseif r < write_share + (1 - write_share) / 2 then
    return wrk.format("POST", "/recommend", headers, pick(data.by_user))
  end
  return wrk.format("POST", "/recommend", headers, pick(data.by_history))
end

function delay()
  if interval == 0 then return 0 end
  local now = now_ms()
  local lag = now - next_slot
  if lag > MAX_LAG_MS then
    missed = missed + math.floor(lag / interval)
    next_slot, lag = now, 0
  end
  if lag > max_lag then max_lag = lag end
  local slot = next_slot
  next_slot = next_slot + interval
  return lag > 0 and 0 or slot - now
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests)
  local bad, sent_writes, dropped, lag = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
    sent_writes = sent_writes + t:get("writes")
    dropped = dropped + t:get("missed")
    lag = math.max(lag, t:get("max_lag"))
  end
  local e = summary.errors
  io.write(string.format(
    'TWOTOWER_WRK {"requests": %d, "duration_s": %.6f, "non2xx": %d, "writes": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "missed": %d, "max_lag_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, bad, sent_writes, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3, dropped, lag))
end
"""
MARKER = "TWOTOWER_WRK "


def available() -> bool:
    return shutil.which("wrk") is not None


def lua_string(text: str) -> str:
    """A Lua string literal for ASCII text (the bodies are ``json.dumps`` with ``ensure_ascii``)."""
    if not text.isascii():
        raise ValueError("Lua literals here hold ASCII only")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def write_script(folder: Path, bodies: dict[str, list[dict]]) -> tuple[Path, Path]:
    """The Lua script and its data file (``return {by_user = {...}, by_history = {...}, writes = {...}}``)."""
    folder.mkdir(parents=True, exist_ok=True)
    script, data = folder / "soak.lua", folder / "soak_data.lua"
    script.write_text(LUA)
    parts = []
    for name, items in bodies.items():
        if not items:
            raise ValueError(f"no {name} bodies")
        parts.append(f"{name} = {{" + ", ".join(lua_string(json.dumps(b)) for b in items) + "}")
    data.write_text("return {\n" + ",\n".join(parts) + "\n}\n")
    return script, data


def command(url: str, script: Path, data: Path, token: str, *, connections: int, seconds: int,
            write_share: float, rate: float = 0.0, threads: int = 1) -> list[str]:  # fmt: skip
    """``rate`` 0: as fast as the connections go; else requests/s over all threads."""
    threads = max(1, min(threads, connections))
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, int(seconds))}s", "--timeout", "2s",
            "-s", str(script), url, "--", str(data), token, repr(float(write_share)),
            repr(float(rate) / threads)]  # fmt: skip


def parse(stdout: str) -> dict:
    """The figures the script's ``done()`` printed, plus ``rps`` and ``errors`` (non-2xx + socket + timeouts)."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{stdout[-2000:]}")
    out = json.loads(line[len(MARKER) :])
    out["rps"] = out["requests"] / out["duration_s"] if out["duration_s"] else 0.0
    out["errors"] = out["non2xx"] + out["socket_errors"] + out["timeouts"]
    return out


def run(args: list[str], timeout: float) -> dict:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return parse(proc.stdout)


def start(args: list[str]) -> subprocess.Popen:
    """wrk in the background; :func:`stop` ends it early and reads its figures."""
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> dict:
    """SIGINT makes wrk stop its threads and print its summary as at the end of its duration."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError("wrk did not stop on SIGINT") from None
    return parse(stdout)
