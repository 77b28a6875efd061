"""Stage what one GPU lease needs, here, and print the device-tool call sequence that carries it.

The lent machine (bench/gpu_device_packages.txt) has Python 3.12, torch with CUDA 13 / cuDNN 9, onnx and
the CPU onnxruntime, and no network. Each device call carries at most 64 MiB: the tracked tree plus the
paths named in ``carry``. The onnxruntime-gpu wheel (~256 MB) therefore travels compressed, in parts,
across several calls. This script:

1. downloads (``pip download``, this machine's index) the onnxruntime-gpu wheel pinned by the ``gpu`` extra
   in pyproject.toml for CPython 3.12, and the wheels of every package the GPU service needs
   (docker/image_requirements.py ``gpu-host`` through pip's resolver, docker/constraints.txt) plus the
   check's own client (httpx, efficientnet-lite-pytorch), minus what the device already has;
2. compresses the big wheel (``zstd -19`` where the ``zstd`` command exists, else ``xz -9``; with zstd the
   ``zstandard`` wheel travels too, in case the device lacks the command);
3. measures the tree that every call sends (``git ls-files`` sizes, untracked files not ignored too) and
   splits the compressed wheel so that no call exceeds 64 MiB minus the tree minus a margin; the small
   wheels ride in the first call;
4. writes ``.gpu-stage/call-K/`` (one folder per call, each with ``manifest.json``: names, sizes, sha256),
   ``.gpu-stage/plan.md``, and prints the call sequence with the expected device time.

The folder ignores itself (its own ``.gitignore``), so only ``carry`` sends it. bench/gpu_check.sh reads it.

    python bench/gpu_stage.py                  # stage for the lease, print the plan (exit 1 if over budget)
    python bench/gpu_stage.py --plan-only      # the plan from what is already staged

On the device (standard library only; bench/gpu_check.sh calls these):

    python bench/gpu_stage.py --receive SRC DEST   # copy the carried call folder(s) SRC/call-* to DEST, check sha256
    python bench/gpu_stage.py --join DEST          # all parts there? join, check, decompress -> prints the wheel path
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
DEVICE_LIST = ROOT / "bench" / "gpu_device_packages.txt"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
GPU_RUNTIME = "onnxruntime-gpu"
# What the check itself needs besides the service (bench/httpload.py's client, EfficientNet-Lite0's
# architecture); downloaded with --no-deps, so each dependency is named (versions: the dev extra's pins).
CHECK_EXTRAS = ("httpx==0.28.1", "httpcore", "certifi", "efficientnet-lite-pytorch")
PART_PREFIX = "ort.whl."
# Service dependencies the check does not carry: it serves over HTTP only (gRPC starts only with --grpc-port),
# and the device has grpcio anyway.
NOT_CARRIED = ("grpcio", "grpcio-health-checking", "grpcio-reflection")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: str | Path) -> str:
    """The canonical project name of a wheel file."""
    return canonical(Path(path).name.split("-")[0])


def device_packages(path: Path = DEVICE_LIST) -> dict[str, str]:
    """{name: version or '*'} from bench/gpu_device_packages.txt."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, *rest = line.split()
            found[canonical(name)] = rest[0] if rest else "*"
    return found


def pinned_gpu_runtime(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """``onnxruntime-gpu==X`` as the ``gpu`` extra pins it."""
    with pyproject.open("rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["gpu"]
    for requirement in extra:
        if canonical(re.split(r"[=<>!~\[ ;]", requirement, maxsplit=1)[0]) == GPU_RUNTIME:
            return requirement
    raise SystemExit(f"pyproject.toml's gpu extra names no {GPU_RUNTIME}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_bytes(root: Path = ROOT) -> tuple[int, int]:
    """(bytes of tracked files, bytes of untracked files that git does not ignore): what every call sends."""
    def total(*args: str) -> int:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", *args], capture_output=True, check=True).stdout
        size = 0
        for name in filter(None, out.split(b"\0")):
            path = root / os.fsdecode(name)
            if path.is_file() and not path.is_symlink():
                size += path.stat().st_size
        return size

    return total(), total("--others", "--exclude-standard")


def pip_download(python: str, dest: Path, args: list[str], python_version: str) -> None:
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    command = [python, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", python_version, *platforms, "-d", str(dest), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"pip download failed ({' '.join(args)}):\n{done.stderr[-2000:]}")


# --- the plan (pure) ---------------------------------------------------------------------------
@dataclass
class Call:
    number: int
    files: dict[str, int] = field(default_factory=dict)  # name in the call folder -> bytes
    command: str = "bash bench/gpu_check.sh --stage"
    timeout_s: int = 120
    run_s: float = 10.0  # expected run time of the command

    @property
    def payload(self) -> int:
        return sum(self.files.values())


@dataclass
class Assumptions:
    """What one call costs besides its own command (the device tool's README gives no rate: these are assumed,
    and stated in the plan; the first lease that runs replaces them with measured ones)."""
    start_s: float = 120.0  # the machine's start on the first call ("a minute or more")
    call_s: float = 10.0  # fixed cost of each call (copy set-up, $OUT back)
    transfer_mib_s: float = 10.0  # the working tree and carried paths, per call
    gap_s: float = 10.0  # between one reply and the next call (the machine is held meanwhile)
    give_back_s: float = 5.0


def split_sizes(stream: int, first_room: int, room: int) -> list[int]:
    """Sizes of the parts: the first call has ``first_room`` left, every later one ``room``."""
    if first_room <= 0 or room <= 0:
        raise ValueError("no room left for the parts in a call: the tree (and, in the first, the small wheels) "
                         "fill it")
    sizes = [min(stream, first_room)]
    left = stream - sizes[0]
    while left > 0:
        sizes.append(min(left, room))
        left -= sizes[-1]
    return sizes


def plan_calls(wheels: dict[str, int], stream: int, room: int, manifest_bytes: int = 16_384,
               bench_timeout_s: int = 480, bench_run_s: float = 300.0) -> list[Call]:
    """One call per part; the small wheels ride in the first; the last call also runs the check."""
    per_call = room - manifest_bytes
    first_room = per_call - sum(wheels.values())
    sizes = split_sizes(stream, first_room, per_call)
    width = max(2, len(str(len(sizes))))
    calls = []
    for i, size in enumerate(sizes, 1):
        call = Call(i)
        if i == 1:
            call.files.update({f"wheels/{name}": n for name, n in wheels.items()})
        call.files[f"{PART_PREFIX}{i:0{width}d}"] = size
        call.files["manifest.json"] = manifest_bytes
        calls.append(call)
    last = calls[-1]
    last.command, last.timeout_s, last.run_s = "bash bench/gpu_check.sh", bench_timeout_s, bench_run_s
    return calls


def device_seconds(calls: list[Call], tree: int, a: Assumptions) -> list[float]:
    """Expected device time of each call (the first includes the start, the last the give-back)."""
    out = []
    for call in calls:
        s = a.call_s + (tree + call.payload) / MIB / a.transfer_mib_s + call.run_s
        s += a.start_s if call.number == 1 else a.gap_s
        if call.number == len(calls):
            s += a.give_back_s
        out.append(s)
    return out


def plan_text(calls: list[Call], tree: int, limit: int, a: Assumptions, budget_s: float, note: str = "") -> str:
    seconds = device_seconds(calls, tree, a)
    total = sum(seconds)
    lines = [f"# GPU lease plan ({len(calls)} calls){note}", "",
             f"Every call sends the tree ({tree / MIB:.1f} MiB: tracked files and untracked files git does not "
             f"ignore) plus its own folder; the limit is {limit / MIB:.0f} MiB a call.", "",
             "| call | carry | payload MiB | sent MiB | command | timeout_s | expected device s |",
             "|---|---|---|---|---|---|---|"]
    for call, s in zip(calls, seconds, strict=True):
        lines.append(f"| {call.number} | `.gpu-stage/call-{call.number}` | {call.payload / MIB:.1f} | "
                     f"{(tree + call.payload) / MIB:.1f} | `{call.command}` | {call.timeout_s} | {s:.0f} |")
    verdict = "within" if total <= budget_s else "**over**"
    lines += ["", f"Expected device time: {total:.0f} s = {total / 60:.1f} min ({verdict} the {budget_s / 60:.0f}-minute "
              f"budget of the 15 the lease has). Assumed: machine start {a.start_s:.0f} s, {a.call_s:.0f} s fixed and "
              f"{a.transfer_mib_s:g} MiB/s per call, {a.gap_s:.0f} s between calls, {a.give_back_s:.0f} s to give back; "
              "the last call's command is counted at its whole budget.", "",
              "Run, one after the other without pause (each `run` names only its own `carry`), then `give_back`:", ""]
    for call in calls:
        lines.append(f"{call.number}. run(command=\"{call.command}\", carry=[\".gpu-stage/call-{call.number}\"], "
                     f"timeout_s={call.timeout_s})")
    lines.append(f"{len(calls) + 1}. give_back()")
    lines += ["", "A stage call that fails (a transfer broke off) is repeated as it was; `--stage` says which parts the "
              "warm machine holds. If the machine went back between calls (it stays warm 30 s), start again from "
              "call 1: nothing staged survives a fresh machine.", ""]
    return "\n".join(lines)


# --- staging -----------------------------------------------------------------------------------
def compress(wheel: Path, dest: Path, codec: str, level: int) -> Path:
    """``wheel`` -> ``dest``/<wheel>.zst|.xz, reused when a sidecar says it was made from the same wheel and level."""
    out = dest / f"{wheel.name}.{codec}"
    stamp = out.with_suffix(out.suffix + ".from")
    key = f"{sha256(wheel)} {codec} {level}"
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return out
    threads = str(max(1, min(4, os.cpu_count() or 1)))
    if codec == "zst":
        command = ["zstd", f"-{level}", f"-T{threads}", "-q", "-f", str(wheel), "-o", str(out)]
        if level > 19:
            command.insert(1, "--ultra")
    else:
        command = ["sh", "-c", f'xz -{min(level, 9)} -T{threads} -c "$0" > "$1"', str(wheel), str(out)]
    subprocess.run(command, check=True)
    stamp.write_text(key + "\n")
    return out


def split_into(stream: Path, sizes: list[int], folders: list[Path], names: list[str]) -> None:
    with stream.open("rb") as f:
        for size, folder, name in zip(sizes, folders, names, strict=True):
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / name).open("wb") as out:
                left = size
                while left:
                    block = f.read(min(left, 1 << 22))
                    if not block:
                        raise RuntimeError("the compressed stream is shorter than the plan")
                    out.write(block)
                    left -= len(block)


def stage(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out: Path = args.out
    cache: Path = args.cache
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("# staged by bench/gpu_stage.py; travels only through the device tool's carry\n*\n")
    have = device_packages(args.device_packages)
    requirement = args.gpu_runtime or pinned_gpu_runtime()

    # 1. the big wheel
    big_dir = cache / "gpu-runtime"
    if args.wheel:
        big = Path(args.wheel)
    else:
        big_dir.mkdir(exist_ok=True)
        pip_download(args.pip_python, big_dir, ["--no-deps", requirement], args.python_version)
        version = requirement.split("==")[-1]
        (big,) = [p for p in big_dir.glob("*.whl") if wheel_name(p) == GPU_RUNTIME and f"-{version}-" in p.name]
    print(f"[gpu_stage] {big.name}: {big.stat().st_size / MIB:.1f} MiB", file=sys.stderr)

    # 2. the small wheels: the service's closure and the check's client, minus what the device has
    small_dir = cache / "wheels"
    if small_dir.exists():
        shutil.rmtree(small_dir)
    small_dir.mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        listed = subprocess.run([sys.executable, str(ROOT / "docker" / "image_requirements.py"), "gpu-host",
                                 str(ROOT / "pyproject.toml")], capture_output=True, text=True, check=True).stdout.split()
        service = [r for r in listed if canonical(re.split(r"[=<>!~\[ ;]", r, maxsplit=1)[0]) != GPU_RUNTIME]
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(service) + "\n")
        try:
            pip_download(args.pip_python, small_dir, ["-r", str(req), "-c", str(ROOT / "docker" / "constraints.txt")],
                         args.python_version)
        except SystemExit as exc:
            print(f"[gpu_stage] WARNING: docker/constraints.txt does not agree with pyproject.toml (rerun "
                  f"`python docker/image_requirements.py lock`); resolving without it.\n{str(exc)[-400:]}",
                  file=sys.stderr)
            pip_download(args.pip_python, small_dir, ["-r", str(req)], args.python_version)
    pip_download(args.pip_python, small_dir, ["--no-deps", *args.extra], args.python_version)
    codec = args.codec if args.codec != "auto" else ("zst" if shutil.which("zstd") else "xz")
    if codec == "zst":
        pip_download(args.pip_python, small_dir, ["--no-deps", "zstandard"], args.python_version)
    dropped = sorted(p.name for p in small_dir.glob("*.whl") if wheel_name(p) in have or wheel_name(p) in NOT_CARRIED)
    for name in dropped:
        (small_dir / name).unlink()
    wheels = {p.name: p.stat().st_size for p in sorted(small_dir.glob("*.whl"))}
    print(f"[gpu_stage] {len(wheels)} small wheels to carry ({sum(wheels.values()) / MIB:.1f} MiB); "
          f"left out (the device has them, or {', '.join(NOT_CARRIED)}): {', '.join(dropped) or 'none'}", file=sys.stderr)

    # 3. compress, measure the tree, plan
    t0 = time.perf_counter()
    stream = compress(big, cache, codec, args.level)
    print(f"[gpu_stage] {stream.name}: {stream.stat().st_size / MIB:.1f} MiB "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    tracked, untracked = tree_bytes()
    tree = tracked + untracked + int(args.tree_extra_mib * MIB)
    limit = int(args.limit_mib * MIB)
    room = int(limit - tree - args.margin_mib * MIB)
    a = Assumptions(args.start_s, args.call_s, args.transfer_mib_s, args.gap_s)
    calls = plan_calls(wheels, stream.stat().st_size, room, bench_timeout_s=args.bench_timeout_s,
                       bench_run_s=args.bench_budget_s)

    # 4. write the call folders and the manifest
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("call-*"), out / "plan.md"]:
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    part_names = [[n for n in c.files if n.startswith(PART_PREFIX)][0] for c in calls]
    split_into(stream, [c.files[n] for c, n in zip(calls, part_names, strict=True)],
               [out / f"call-{c.number}" for c in calls], part_names)
    (out / "call-1" / "wheels").mkdir(parents=True, exist_ok=True)
    for name in wheels:
        shutil.copy2(small_dir / name, out / "call-1" / "wheels" / name)
    parts = []
    for c, n in zip(calls, part_names, strict=True):
        path = out / f"call-{c.number}" / n
        parts.append({"name": n, "call": c.number, "bytes": path.stat().st_size, "sha256": sha256(path)})
    manifest = {
        "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python_version": args.python_version,
        "wheel": {"name": big.name, "bytes": big.stat().st_size, "sha256": sha256(big), "requirement": requirement},
        "codec": codec, "level": args.level,
        "stream": {"name": stream.name, "bytes": stream.stat().st_size, "sha256": sha256(stream)},
        "parts": parts,
        "wheels": [{"name": n, "call": 1, "bytes": b, "sha256": sha256(out / "call-1" / "wheels" / n)}
                   for n, b in wheels.items()],
        "left_out": dropped,
        "tree_bytes": {"tracked": tracked, "untracked": untracked, "extra": int(args.tree_extra_mib * MIB)},
        "limit_bytes": limit, "margin_bytes": int(args.margin_mib * MIB),
        "calls": [{**asdict(c), "payload": c.payload} for c in calls],
        "assumptions": asdict(a),
        "expected_device_s": [round(s, 1) for s in device_seconds(calls, tree, a)],
        "budget_s": args.budget_s,
    }
    text = json.dumps(manifest, indent=1)
    if len(text) > 16_384:
        raise SystemExit("manifest.json is larger than the room planned for it")
    for c in calls:
        (out / f"call-{c.number}" / "manifest.json").write_text(text)
        c.files["manifest.json"] = len(text)
    for c in calls:
        size = sum(p.stat().st_size for p in (out / f"call-{c.number}").rglob("*") if p.is_file())
        if tree + size > limit - args.margin_mib * MIB / 2:
            raise SystemExit(f"call {c.number} would send {(tree + size) / MIB:.1f} MiB, over the limit")
    plan = plan_text(calls, tree, limit, a, args.budget_s)
    (out / "plan.md").write_text(plan)
    print(plan)
    print(f"[gpu_stage] staged in {out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0 if sum(device_seconds(calls, tree, a)) <= args.budget_s else 1


def plan_only(args: argparse.Namespace) -> int:
    manifest = json.loads(next(iter(sorted(args.out.glob("call-*/manifest.json")))).read_text())
    tree = sum(manifest["tree_bytes"].values())
    calls = [Call(c["number"], c["files"], c["command"], c["timeout_s"], c["run_s"]) for c in manifest["calls"]]
    a = Assumptions(**manifest["assumptions"])
    print(plan_text(calls, tree, manifest["limit_bytes"], a, manifest["budget_s"]))
    return 0 if sum(device_seconds(calls, tree, a)) <= manifest["budget_s"] else 1



# --- on the device (standard library only) ---------------------------------------------------------
def receive(src: Path, dest: Path) -> int:
    """Copy every carried call folder's files into ``dest`` (which outlives the call on the warm machine),
    checking each against the manifest; print what is staged so far. 0 when this call's files are all good."""
    folders = sorted(src.glob("call-*"), key=lambda p: int(p.name.split("-")[1]))
    if not folders:
        print(f"[stage] nothing carried: no {src}/call-* (name the call's folder in `carry`)", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    bad = 0
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        old = dest / "manifest.json"
        if old.is_file() and json.loads(old.read_text())["stream"]["sha256"] != manifest["stream"]["sha256"]:
            print("[stage] a different staging run is on this machine: starting over", file=sys.stderr)
            shutil.rmtree(dest)
            dest.mkdir(parents=True)
        (dest / "manifest.json").write_text(json.dumps(manifest))
        number = int(folder.name.split("-")[1])
        for entry in [*manifest["parts"], *manifest["wheels"]]:
            if entry["call"] != number:
                continue
            rel = entry["name"] if entry in manifest["parts"] else f"wheels/{entry['name']}"
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / rel, target)
            if target.stat().st_size != entry["bytes"] or sha256(target) != entry["sha256"]:
                print(f"[stage] {rel}: size or sha256 differs from the manifest (a broken transfer: repeat this call)",
                      file=sys.stderr)
                target.unlink()
                bad += 1
    status(dest, quiet=False)
    return bad


def status(dest: Path, quiet: bool = True) -> int:
    """How many parts or wheels are still missing in ``dest`` (checked by size; sha256 was checked on arrival)."""
    manifest = json.loads((dest / "manifest.json").read_text())
    missing = [e for e in manifest["parts"] if not (dest / e["name"]).is_file()]
    missing += [e for e in manifest["wheels"] if not (dest / "wheels" / e["name"]).is_file()]
    calls = sorted({e["call"] for e in missing})
    if not quiet:
        have = len(manifest["parts"]) - len([e for e in missing if e in manifest["parts"]])
        print(f"[stage] {have} of {len(manifest['parts'])} parts and "
              f"{len(manifest['wheels']) - len([e for e in missing if e in manifest['wheels']])} of "
              f"{len(manifest['wheels'])} wheels staged in {dest}"
              + (f"; still to carry: call {', '.join(map(str, calls))}" if calls else "; complete"), file=sys.stderr)
    return len(missing)


def decompressor(dest: Path, codec: str):
    """A function file-in -> file-out for ``codec``: the zstd command, else the carried zstandard wheel, or lzma."""
    if codec == "xz":
        import lzma

        def unxz(src: Path, out: Path) -> None:
            with lzma.open(src) as f, out.open("wb") as o:
                shutil.copyfileobj(f, o, 1 << 22)
        return unxz
    if shutil.which("zstd"):
        return lambda src, out: subprocess.run(["zstd", "-d", "-q", "-f", "--long=31", str(src), "-o", str(out)],
                                               check=True)
    try:
        import zstandard
    except ImportError:
        import zipfile

        wheels = sorted((dest / "wheels").glob("zstandard-*.whl"))
        if not wheels:
            raise SystemExit("no zstd command and no zstandard wheel staged: cannot decompress") from None
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(dest / "zstandard-site")
        sys.path.insert(0, str(dest / "zstandard-site"))
        import zstandard

    def unzstd(src: Path, out: Path) -> None:
        with src.open("rb") as f, out.open("wb") as o:
            zstandard.ZstdDecompressor(max_window_size=1 << 31).copy_stream(f, o)
    return unzstd


def join(dest: Path) -> int:
    """Join the parts, check the stream and the wheel against the manifest; print the wheel's path."""
    if status(dest, quiet=False):
        return 1
    manifest = json.loads((dest / "manifest.json").read_text())
    stream = dest / manifest["stream"]["name"]
    t0 = time.perf_counter()
    with stream.open("wb") as out:
        for part in manifest["parts"]:
            with (dest / part["name"]).open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    if sha256(stream) != manifest["stream"]["sha256"]:
        print("[stage] the joined stream's sha256 differs from the manifest", file=sys.stderr)
        return 1
    wheel = dest / manifest["wheel"]["name"]
    decompressor(dest, manifest["codec"])(stream, wheel)
    if sha256(wheel) != manifest["wheel"]["sha256"]:
        print("[stage] the wheel's sha256 differs from the manifest", file=sys.stderr)
        return 1
    stream.unlink()
    print(f"[stage] joined {len(manifest['parts'])} parts and decompressed ({manifest['codec']}) "
          f"{wheel.name} in {time.perf_counter() - t0:.1f} s; sha256 ok", file=sys.stderr)
    print(wheel)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / ".gpu-stage", help="the staging folder (ignored by git)")
    p.add_argument("--cache", type=Path, help="downloads and the compressed wheel, reused between runs [OUT/cache]")
    p.add_argument("--plan-only", action="store_true", help="print the plan of what --out already holds")
    p.add_argument("--receive", nargs=2, type=Path, metavar=("SRC", "DEST"), help="(device) take in the carried parts")
    p.add_argument("--join", type=Path, metavar="DEST", help="(device) join, check and decompress the staged wheel")
    p.add_argument("--python-version", default="3.12", help="the device's Python")
    p.add_argument("--pip-python", default=sys.executable, help="the interpreter whose pip downloads")
    p.add_argument("--gpu-runtime", help="requirement of the big wheel [the gpu extra's onnxruntime-gpu pin]")
    p.add_argument("--wheel", help="use this onnxruntime-gpu wheel file instead of downloading it")
    p.add_argument("--extra", nargs="*", default=list(CHECK_EXTRAS), help="the check's own extra wheels (--no-deps)")
    p.add_argument("--device-packages", type=Path, default=DEVICE_LIST)
    p.add_argument("--codec", choices=["auto", "zst", "xz"], default="auto", help="auto: zst where zstd exists")
    p.add_argument("--level", type=int, default=19, help="compression level")
    p.add_argument("--limit-mib", type=float, default=64.0, help="what one device call may send")
    p.add_argument("--margin-mib", type=float, default=3.0, help="room kept free in every call")
    p.add_argument("--tree-extra-mib", type=float, default=0.0,
                   help="count the tree this much larger (files other developers may add before the lease)")
    p.add_argument("--budget-s", type=float, default=720.0, help="the device time the plan must fit (exit 1 if not)")
    p.add_argument("--bench-budget-s", type=float, default=300.0,
                   help="the last call's check (bench/gpu_check.sh GPU_CHECK_BUDGET_S)")
    p.add_argument("--bench-timeout-s", type=int, default=480, help="timeout_s of the last call")
    for name, default in asdict(Assumptions()).items():
        if name != "give_back_s":
            p.add_argument(f"--{name.replace('_', '-')}", type=float, default=default)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.receive:
        return min(1, receive(*args.receive))
    if args.join:
        return join(args.join)
    args.out = args.out.resolve()
    args.cache = (args.cache or args.out / "cache").resolve()
    return plan_only(args) if args.plan_only else stage(args)


if __name__ == "__main__":
    sys.exit(main())
