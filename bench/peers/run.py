"""rbn-serve side by side with BentoML, Ray Serve, KServe and Triton (PyTriton): same bundle, same client, one run.

    python bench/peers/run.py [--peers rbn-serve,bentoml,ray,kserve,pytriton] [--concurrency 1,16,64]
        [--rounds 2] [--warmup 3] [--duration 10] [--tune-concurrency 16,64] [--tune-duration 5]
        [--pause-training] [--gpu] [--benchmarks BENCHMARKS.md] [--out FILE]

1. Venvs: each peer's own (bench/peers/venvs.py, ``.peers/<peer>``), created when missing.
2. Tuning: every setting of every peer (bench/peers/catalog.py) at ``--tune-concurrency``; the best one
   per peer (geometric mean of req/s) goes on. A peer with one setting skips this stage.
3. Rounds: ``--rounds`` times, every peer in turn with its best setting, in an order that rotates from
   round to round; each is started, its answer to the sample image checked against the service's own
   pipeline (bench/peers/pipeline.py in this process), then driven by wrk at each ``--concurrency`` after
   a warm-up, its resident memory read after each level (VmRSS summed over its process tree, and PSS,
   which counts shared pages once), and stopped (its whole process tree).
4. A Markdown section: medians over the rounds, the ratios rbn-serve / peer, the tuning table, every
   setting; printed, and with ``--benchmarks`` written into that file between the peers markers.

``--pause-training`` SIGSTOPs the lead's training jobs (``rbn train`` / ``rbn finetune``) during each
stage separately (resumed between stages and on any exit; bench/common.py's Paused has a watchdog).
Servers run from this checkout on 127.0.0.1 ephemeral ports; every subprocess is bounded in time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if str(Path(__file__).resolve().parents[2]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import (  # noqa: E402
    ROOT,
    SAMPLE_PNG,
    Paused,
    ServerProcess,
    bounded_run,
    emit,
    exit_on_sigterm,
    free_port,
    header,
    parse_ints,
    progress,
    python_env,
)
from bench.peers import framing, venvs  # noqa: E402
from bench.peers.catalog import PEERS, Peer, Setting  # noqa: E402
from harness.procs import http  # noqa: E402 - raises OSError when nothing answers (bench.common.http hides it)
from harness.wrk import Load, Wrk, wrk_version  # noqa: E402

WRK_PEER = ROOT / "bench" / "peers" / "wrk_peer.lua"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
TRAINING = r"bin/rbn (train|finetune)"


@dataclass(frozen=True)
class Sample:
    """One measured level of one server: what wrk saw, its memory right after, and the CPU time its
    processes used per request during the run (ms, by process name: where the work goes)."""

    load: Load
    rss_mb: float
    pss_mb: float
    cpu_ms: dict[str, float]

    @property
    def cpu_ms_total(self) -> float:
        return sum(self.cpu_ms.values())


# --- processes ---------------------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB summed over ``pid``'s process tree (RSS counts shared pages in every process)."""
    rss = pss = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue  # gone, or a kernel thread
    return rss * 1024 / 1e6, pss * 1024 / 1e6


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """{pid: (process name, user + system CPU seconds)} over ``pid``'s process tree."""
    out = {}
    for p in process_tree(pid):
        try:
            text = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[p] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def cpu_per_request(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                    requests: int) -> dict[str, float]:
    """CPU ms per request by process name, from two ``cpu_seconds`` readings."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        delta = seconds - before.get(pid, (name, 0.0))[1]
        used[name] = used.get(name, 0.0) + delta
    return {name: 1000 * s / max(1, requests) for name, s in used.items() if s > 0}


def stop_tree(server: ServerProcess) -> None:
    """SIGTERM the server (then SIGKILL, harness/procs.py), then SIGKILL whatever of its tree outlived it
    (Ray's GCS and raylet, Triton's server and its Python backend stubs)."""
    tree = process_tree(server.pid)
    server.stop(timeout=15)
    deadline = time.monotonic() + 5
    for pid in tree[1:]:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def training_pids() -> list[int]:
    done = subprocess.run(["pgrep", "-f", TRAINING], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


# --- one server ----------------------------------------------------------------------------------------
class Runner:
    """Starts servers and drives them with wrk; holds what every measurement shares."""

    def __init__(self, args: argparse.Namespace, pythons: dict[str, Path], repository: Path, log_dir: Path) -> None:
        self.args = args
        self.pythons = pythons
        self.repository = repository
        self.log_dir = log_dir
        self.image = args.body.read_bytes()
        from bench.peers.pipeline import Pipeline  # the reference answer: the service's own code, in process

        self.reference = Pipeline(repository / bundle_name(repository), "cuda" if args.gpu else "cpu").predict(
            [self.image])[0]["predictions"][0]

    def start(self, peer: Peer, setting: Setting) -> ServerProcess:
        port = free_port()
        python = self.pythons.get(peer.name, Path(sys.executable))
        env = python_env({**setting.env, "PEER_BUNDLE": str(self.repository / bundle_name(self.repository)),
                          "PEER_PROVIDERS": "cuda" if self.args.gpu else "cpu"})
        if peer.venv is not None:
            env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
        argv = peer.command(python, port, setting, self.repository, self.args.gpu)
        log = self.log_dir / f"{peer.name}-{port}.log"
        server = ServerProcess(peer.name, argv, port, log, env)
        request = framing.frame(peer.framing, self.image)

        def ready() -> bool:
            if http("GET", server.url + peer.ready_path, timeout=2)[0] != 200:
                return False
            return http("POST", server.url + peer.path, request.body, request.headers, timeout=30)[0] == 200

        try:
            server.wait_until(lambda: _quiet(ready), self.args.ready_timeout)
            status, body = http("POST", server.url + peer.path, request.body, request.headers, timeout=30)
            problem = framing.same_answer(framing.first_prediction(peer.framing, body), self.reference)
            if problem:
                raise RuntimeError(f"{peer.name} answers differently from the service's pipeline: {problem}")
        except BaseException:
            stop_tree(server)
            raise
        return server

    def drive(self, peer: Peer, server: ServerProcess, concurrency: int, warmup: int, duration: int) -> Sample:
        request = framing.frame(peer.framing, self.image)
        body_file = self.log_dir / f"body-{peer.framing}.bin"
        body_file.write_bytes(request.body)
        url = server.url + peer.path
        # wrk_peer.lua adds the headers other than Content-Type that some framings need
        extra = "|".join(f"{k}: {v}" for k, v in request.headers.items() if k != "Content-Type")
        client = Wrk(self.args.wrk, self.args.wrk_threads, body_file, request.headers["Content-Type"],
                     script_env={"EXTRA_HEADERS": extra})
        if warmup > 0:
            client.run(url, concurrency, warmup, WRK_PEER)
        before = cpu_seconds(server.pid)
        load = client.run(url, concurrency, duration, WRK_PEER)
        cpu = cpu_per_request(before, cpu_seconds(server.pid), load.requests)
        rss, pss = memory_mb(server.pid)
        progress(f"{peer.name} c={concurrency}: {load.per_s:.0f} req/s, p50 {load.p50_ms:.2f} ms, p99 "
                 f"{load.p99_ms:.2f} ms, errors {load.errors}, RSS {rss:.0f} MB, PSS {pss:.0f} MB, "
                 f"CPU {sum(cpu.values()):.2f} ms/request")
        return Sample(load, rss, pss, cpu)


def _quiet(check) -> bool:
    try:
        return check()
    except OSError:
        return False


def bundle_name(repository: Path) -> str:
    return next(p.name for p in sorted(repository.iterdir()) if (p / "model.json").exists())


# --- stages --------------------------------------------------------------------------------------------
def tune(runner: Runner, peers: list[Peer], levels: list[int], warmup: int, duration: int
         ) -> dict[str, list[tuple[Setting, dict[int, Sample]]]]:
    """Every setting of every peer that has several, at ``levels``."""
    results: dict[str, list[tuple[Setting, dict[int, Sample]]]] = {}
    for peer in peers:
        if len(peer.settings) < 2:
            continue
        for setting in peer.settings:
            progress(f"tuning {peer.name}: {setting.name}")
            try:
                server = runner.start(peer, setting)
            except (RuntimeError, TimeoutError) as exc:  # a setting that does not come up is a result, not the end
                progress(f"{peer.name} ({setting.name}) did not start: {str(exc).splitlines()[0]}")
                results.setdefault(peer.name, []).append((setting, {}))
                continue
            try:
                samples = {c: runner.drive(peer, server, c, warmup, duration) for c in levels}
            finally:
                stop_tree(server)
            results.setdefault(peer.name, []).append((setting, samples))
    return results


def best_setting(peer: Peer, tuned: dict[str, list[tuple[Setting, dict[int, Sample]]]]) -> Setting:
    """The setting with the highest geometric mean of req/s over the tuning levels (errors disqualify)."""
    if peer.name not in tuned:
        return peer.settings[0]

    def score(item: tuple[Setting, dict[int, Sample]]) -> float:
        samples = item[1].values()
        if not samples or any(s.load.errors or s.load.requests == 0 for s in samples):
            return 0.0
        return math.exp(statistics.fmean(math.log(s.load.per_s) for s in samples))

    return max(tuned[peer.name], key=score)[0]


def chosen_setting(peer: Peer, tuned: dict[str, list[tuple[Setting, dict[int, Sample]]]],
                   use: list[str]) -> Setting:
    """The setting named by ``--use PEER=SETTING`` for this peer, else the tuning's best."""
    for item in use:
        name, _, setting = item.partition("=")
        if name == peer.name:
            found = [s for s in peer.settings if s.name == setting]
            if not found:
                raise SystemExit(f"--use {item}: {peer.name}'s settings are {[s.name for s in peer.settings]}")
            return found[0]
    return best_setting(peer, tuned)


def rounds(runner: Runner, chosen: list[tuple[Peer, Setting]], levels: list[int], count: int, warmup: int,
           duration: int) -> dict[tuple[str, int], list[Sample]]:
    """``count`` rounds; in each, every peer in turn (order rotating by one per round) at every level."""
    results: dict[tuple[str, int], list[Sample]] = {(p.name, c): [] for p, _ in chosen for c in levels}
    for r in range(count):
        order = chosen[r % len(chosen):] + chosen[:r % len(chosen)]
        for peer, setting in order:
            progress(f"round {r + 1}/{count}: {peer.name} ({setting.name})")
            server = runner.start(peer, setting)
            try:
                for c in levels:
                    results[(peer.name, c)].append(runner.drive(peer, server, c, warmup, duration))
            finally:
                stop_tree(server)
    return results


# --- report --------------------------------------------------------------------------------------------
def median(samples: list[Sample], field: str) -> float:
    return statistics.median(getattr(s.load, field) if hasattr(s.load, field) else getattr(s, field) for s in samples)


def results_table(chosen: list[tuple[Peer, Setting]], levels: list[int],
                  results: dict[tuple[str, int], list[Sample]]) -> list[str]:
    ours = "rbn-serve"
    lines = ["| server (best setting) | concurrency | req/s | p50 ms | p99 ms | errors | RSS MB (tree) | PSS MB | "
             "CPU ms / request | rbn-serve / peer: req/s | rbn-serve / peer: p50 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for peer, setting in chosen:
        for c in levels:
            samples = results[(peer.name, c)]
            rps, p50 = median(samples, "per_s"), median(samples, "p50_ms")
            ratio_rps = ratio_p50 = "—"
            if peer.name != ours and (ours, c) in results:
                ratio_rps = f"{median(results[(ours, c)], 'per_s') / rps:.2f}" if rps > 0 else "—"
                ratio_p50 = f"{median(results[(ours, c)], 'p50_ms') / p50:.2f}" if p50 > 0 else "—"
            errors = sum(s.load.errors for s in samples)  # wrk_post.lua: errors include non-2xx
            lines.append(f"| {peer.name} ({setting.name}) | {c} | {rps:.0f} | {p50:.2f} | {median(samples, 'p99_ms'):.2f} "
                         f"| {errors} | {max(s.rss_mb for s in samples):.0f} | {max(s.pss_mb for s in samples):.0f} "
                         f"| {statistics.median(s.cpu_ms_total for s in samples):.2f} | {ratio_rps} | {ratio_p50} |")
    return lines


def target_lines(chosen: list[tuple[Peer, Setting]], levels: list[int],
                 results: dict[tuple[str, int], list[Sample]]) -> list[str]:
    ours = "rbn-serve"
    if not any(p.name == ours for p, _ in chosen):
        return []
    out = []
    for c in (c for c in levels if c in (16, 64)):
        ratios = {p.name: median(results[(ours, c)], "per_s") / median(results[(p.name, c)], "per_s")
                  for p, _ in chosen if p.name != ours and median(results[(p.name, c)], "per_s") > 0}
        if ratios:
            worst = min(ratios, key=ratios.get)
            ok = ratios[worst] >= 1.3
            out.append(f"- Throughput at concurrency {c}: rbn-serve / {worst} (the closest peer) = {ratios[worst]:.2f} "
                       f"(target ≥ 1.3 × every peer: {'met' if ok else '**missed**'})")
    if 1 in levels:
        ours_p50 = median(results[(ours, 1)], "p50_ms")
        others = {p.name: median(results[(p.name, 1)], "p50_ms") for p, _ in chosen if p.name != ours}
        if others:
            best = min(others, key=others.get)
            ok = ours_p50 < others[best]
            out.append(f"- p50 at concurrency 1: rbn-serve {ours_p50:.2f} ms, lowest peer {best} {others[best]:.2f} ms "
                       f"(target: lower than every peer: {'met' if ok else '**missed**'})")
    return out


def cpu_table(chosen: list[tuple[Peer, Setting]], level: int, results: dict[tuple[str, int], list[Sample]]) -> list[str]:
    """Where each server's CPU goes at ``level``: ms per request by process name (median over rounds)."""
    lines = ["| server | process (name in /proc) | CPU ms / request |", "|---|---|---|"]
    for peer, _ in chosen:
        samples = results[(peer.name, level)]
        names = sorted({n for s in samples for n in s.cpu_ms}, key=lambda n: -statistics.median(
            s.cpu_ms.get(n, 0.0) for s in samples))
        for name in names:
            value = statistics.median(s.cpu_ms.get(name, 0.0) for s in samples)
            if value >= 0.01:
                lines.append(f"| {peer.name} | `{name}` | {value:.2f} |")
    return lines


def tuning_table(tuned: dict[str, list[tuple[Setting, dict[int, Sample]]]], levels: list[int]) -> list[str]:
    cols = " | ".join(f"req/s at {c} | p99 ms at {c}" for c in levels)
    lines = [f"| peer | setting | {cols} | errors | why this setting |",
             "|---|---|" + "---|---|" * len(levels) + "---|---|"]
    for name, items in tuned.items():
        for setting, samples in items:
            if not samples:
                blank = " | ".join("—" for _ in range(2 * len(levels)))
                lines.append(f"| {name} | {setting.name} | {blank} | did not start in time | {setting.why} |")
                continue
            cells = " | ".join(f"{samples[c].load.per_s:.0f} | {samples[c].load.p99_ms:.1f}" for c in levels)
            errors = sum(s.load.errors for s in samples.values())
            lines.append(f"| {name} | {setting.name} | {cells} | {errors} | {setting.why} |")
    return lines


def settings_lines(chosen: list[tuple[Peer, Setting]], pythons: dict[str, Path]) -> list[str]:
    lines = []
    for peer, setting in chosen:
        where = f"venv `.peers/{pythons[peer.name].parent.parent.name}`" if peer.name in pythons else "the project's venv"
        env = " ".join(f"{k}={v}" for k, v in setting.env.items())
        flags = " ".join(setting.args)
        lines.append(f"- **{peer.name}** ({where}; {peer.docs}): best setting *{setting.name}*"
                     + (f" (`{' '.join(x for x in (env, flags) if x)}`)" if env or flags else "")
                     + f": {setting.why}")
    return lines


def write_section(path: Path, text: str) -> None:
    """Replace the text between the peers markers in ``path`` (append the section when they are absent)."""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}\n"
    current = path.read_text() if path.exists() else ""
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        path.write_text(head + block + ("\n" + tail if tail else ""))
    else:
        path.write_text(current.rstrip() + ("\n\n" if current else "") + block)


# --- main ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from {', '.join(PEERS)}")
    p.add_argument("--concurrency", type=parse_ints, default=[1, 16, 64])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each measured level")
    p.add_argument("--duration", type=int, default=10, help="seconds per measured level")
    p.add_argument("--tune-concurrency", type=parse_ints, default=[16, 64])
    p.add_argument("--tune-warmup", type=int, default=2)
    p.add_argument("--tune-duration", type=int, default=5, help="seconds per tuning level (0: no tuning, first setting)")
    p.add_argument("--use", action="append", default=[], metavar="PEER=SETTING",
                   help="measure PEER with this setting (by name) instead of the tuning's best (repeatable)")
    p.add_argument("--max-settings", type=int, default=0, help="try only each peer's first N settings (0: all)")
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "fmnist-resnet20-rbn")
    p.add_argument("--body", type=Path, default=SAMPLE_PNG)
    p.add_argument("--venv-root", type=Path, default=ROOT / ".peers")
    p.add_argument("--python", default=None, help="interpreter the venvs are made from (default: bench/peers/venvs.py)")
    p.add_argument("--gpu", action="store_true", help="CUDA: onnxruntime-gpu venvs (.peers/<peer>-gpu), providers cuda")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--pause-training", action="store_true", help="SIGSTOP `rbn train`/`rbn finetune` during each stage")
    p.add_argument("--resume-gap", type=float, default=120.0,
                   help="with --pause-training: seconds the jobs run between the tuning and the rounds")
    p.add_argument("--benchmarks", type=Path, help="write the section into this Markdown file (between the markers)")
    p.add_argument("--out", type=Path, help="also write the section to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exit_on_sigterm()
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise SystemExit(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    peers = [PEERS[n] for n in names]
    if args.max_settings > 0:
        peers = [dataclasses.replace(p, settings=p.settings[:args.max_settings]) for p in peers]
    pythons = {p.name: venvs.ensure(p.venv, args.venv_root, args.python, args.gpu, progress)
               for p in peers if p.venv is not None}
    with tempfile.TemporaryDirectory(prefix="rbn-peers-") as tmp:
        repository = Path(tmp) / "models"  # the one bundle every server serves, and nothing else
        repository.mkdir()
        (repository / args.bundle.name).symlink_to(args.bundle.resolve())
        log_dir = Path(tmp)
        runner = Runner(args, pythons, repository, log_dir)
        pause = training_pids() if args.pause_training else []
        tuned: dict = {}
        if args.tune_duration > 0:
            with Paused(pause):
                tuned = tune(runner, peers, args.tune_concurrency, args.tune_warmup, args.tune_duration)
        chosen = [(p, chosen_setting(p, tuned, args.use)) for p in peers]
        if pause and tuned:
            progress(f"training runs for {args.resume_gap:.0f} s between the stages")
            time.sleep(args.resume_gap)  # two pauses, not one long one
        with Paused(pause):
            results = rounds(runner, chosen, args.concurrency, args.rounds, args.warmup, args.duration)
    lines = header("Peers: rbn-serve vs BentoML, Ray Serve, KServe and Triton (PyTriton), same bundle, same client",
                   packages=("onnxruntime", "numpy"), extra=[
        (f"Client: {wrk_version(args.wrk)} `-t{args.wrk_threads}`, bench/peers/wrk_peer.lua POSTing "
         f"`{args.body.relative_to(ROOT) if args.body.resolve().is_relative_to(ROOT) else args.body}` framed as each "
         "server's docs show (bench/peers/framing.py); "
         f"{args.warmup} s warm-up then {args.duration} s per level; {args.rounds} round(s), order rotating; loopback"),
        (f"Model: `{args.bundle.name}` (the only bundle each server loads), ONNX Runtime "
         f"{'CUDA' if args.gpu else 'CPU'}, the service's session options; every server's answer to the sample "
         "was checked against the service's own pipeline (label, top-k, probabilities and OOD score within 1e-5)"),
        "Peer versions (their venvs, bench/peers/requirements-*.txt): " + "; ".join(
            f"{n}: {installed(n, py)}" for n, py in pythons.items()),
    ] + ([f"Training jobs {pause} paused (SIGSTOP) during tuning and during the rounds, resumed in between"]
         if pause else []))
    lines += ["### Best setting of each server, medians over the rounds", ""]
    lines += results_table(chosen, args.concurrency, results)
    lines += [""] + target_lines(chosen, args.concurrency, results)
    top = max(args.concurrency)
    lines += ["", f"### Where the CPU goes at concurrency {top} (user + system time of each server's processes "
              "during the measured run, per request)", ""]
    lines += cpu_table(chosen, top, results)
    lines += ["", "### Settings", ""] + settings_lines(chosen, pythons)
    if tuned:
        lines += ["", f"### Tuning: every setting tried ({args.tune_warmup} s warm-up, {args.tune_duration} s per level, "
                  "one run each)", ""]
        lines += tuning_table(tuned, args.tune_concurrency)
    text = emit(lines, str(args.out) if args.out else None)
    if args.benchmarks:
        write_section(args.benchmarks, text)
    failed = any(s.load.errors or s.load.non_2xx or s.load.requests == 0 for v in results.values() for s in v)
    return 1 if failed else 0


SHOWN_PACKAGES = {"bentoml": "bentoml", "ray": "ray", "kserve": "kserve", "pytriton": "nvidia-pytriton"}


def installed(peer: str, python: Path) -> str:
    """The peer's package and what it serves with, as installed in its venv (``pip``'s metadata)."""
    packages = [SHOWN_PACKAGES[peer], "onnxruntime", "onnxruntime-gpu", "numpy", "fastapi", "starlette", "uvicorn"]
    code = ("import importlib.metadata as m, sys\n"
            "for p in sys.argv[1:]:\n"
            "    try: print(p, m.version(p))\n"
            "    except m.PackageNotFoundError: pass\n")
    done = bounded_run([str(python), "-c", code, *packages], timeout=60)
    return ", ".join(done.stdout.split("\n")[:-1]) if done.returncode == 0 else "?"


if __name__ == "__main__":
    sys.exit(main())
