"""Local server processes for benchmarks and tests: a free loopback port, waiting for a server to answer, and a
throwaway ``redis-server`` with the recommended persistence."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, its files in ``directory``, with the persistence the
    docs recommend (AOF, fsync before every reply; no RDB snapshots): for tests and the benchmark."""

    def __init__(self, directory: str | Path, fsync: str = "always") -> None:
        self.dir, self.fsync, self.port = Path(directory), fsync, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not on PATH (Debian: apt-get install -y redis-server)")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                "--appendonly", "yes", "--appendfsync", self.fsync, "--daemonize", "no", "--protected-mode", "yes"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}): {args}")
            with (
                contextlib.suppress(redis.RedisError),
                redis.Redis(port=self.port, socket_timeout=1) as client,
            ):
                if client.ping():
                    return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server not answering on port {self.port} after 30 s")
            time.sleep(0.05)

    def restart(self) -> RedisServer:
        """SIGKILL, then a new server on the same port and files (what it loads is what was on disk)."""
        self.kill()
        return self.start()

    def kill(self) -> None:
        """SIGKILL: no shutdown save, nothing flushed but what was already written."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def wait_ready(proc: subprocess.Popen, url: str, seconds: float, hint: str = "") -> None:
    """Poll ``url`` until it answers 200; RuntimeError (ending with ``hint``) when the server process exits
    first or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}){hint}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after {seconds:.0f} s{hint}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
