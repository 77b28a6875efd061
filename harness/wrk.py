"""wrk, the HTTP load generator the benchmarks and the load tests drive: one run at a fixed concurrency,
for a fixed time (or, with a script that stops, a fixed count) -> ``Load``.

``harness/wrk_post.lua`` POSTs the file ``BODY_FILE`` as the raw body with ``CONTENT_TYPE`` and prints one
``WRK_JSON`` line of counts and latency percentiles; other scripts (``bench/wrk_count.lua``,
``bench/peers/wrk_peer.lua``) load it and add to it. Standard library only, like the rest of harness/.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from harness.procs import bounded_run

WRK_POST = Path(__file__).resolve().parent / "wrk_post.lua"


@dataclass(frozen=True)
class Load:
    """What wrk measured in one fixed-duration (or fixed-count) run."""

    requests: int
    seconds: float
    errors: int  # connection, read, write and timeout errors and non-2xx answers
    non_2xx: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


class Wrk:
    """``executable`` with up to ``threads`` threads, POSTing ``body`` (a file) as ``content_type``."""

    def __init__(self, executable: str, threads: int, body: Path, content_type: str,
                 script_env: dict[str, str] | None = None) -> None:
        self.executable = executable
        self.threads = threads
        self.body = body
        self.content_type = content_type
        self.script_env = script_env or {}  # more variables for the Lua script (wrk_peer.lua's EXTRA_HEADERS)

    def run(self, url: str, concurrency: int, seconds: int, script: Path = WRK_POST, max_requests: int = 0) -> Load:
        """One run of ``seconds`` at ``concurrency`` connections (threads capped at it); RuntimeError, with
        wrk's output, when wrk fails or prints no result."""
        threads = max(1, min(self.threads, concurrency))
        args = [self.executable, f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency", "--timeout", "30s",
                "-s", str(script), url]
        env = {**os.environ, "BODY_FILE": str(self.body), "CONTENT_TYPE": self.content_type,
               "MAX_REQUESTS": str(max_requests), **self.script_env}
        done = bounded_run(args, timeout=seconds + 60, env=env)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed (exit {done.returncode}): {' '.join(args)}\n{done.stdout}\n{done.stderr}")
        data = json.loads(line.split(" ", 1)[1])
        return Load(data["requests"], data["duration_us"] / 1e6, data["errors"], data["non_2xx"],
                    data["p50_us"] / 1e3, data["p95_us"] / 1e3, data["p99_us"] / 1e3)


def wrk_version(executable: str) -> str:
    out = bounded_run([executable, "-v"], 10).stdout.strip()
    return out.splitlines()[0].split(" Copyright")[0].strip() if out else "wrk"
