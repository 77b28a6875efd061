"""The GPU lease's pieces, fast: bench/gpu_stage.py's plan (parts sized to the call limit, the small wheels in
the first call, the expected device time), its device side (take in carried parts with their checksums, join,
decompress with either codec, refuse a broken or missing part) and bench/gpu_check.sh's refusal to measure
from an incomplete staging. The whole lease, end to end on the CPU: test_gpu_lease_dryrun.py.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import ROOT

sys.path.insert(0, str(ROOT))
from bench import gpu_stage  # noqa: E402

SCRIPT = ROOT / "bench" / "gpu_check.sh"
MIB = 1 << 20


def gpu_check(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout, check=False)


def image_list(variant: str) -> list[str]:
    done = subprocess.run([sys.executable, str(ROOT / "docker" / "image_requirements.py"), variant,
                           str(ROOT / "pyproject.toml")], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_list_is_the_gpu_host_image_list():
    done = gpu_check("--print-requirements")
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split()
    assert listed == image_list("gpu-host")
    (cpu_runtime,) = [r for r in image_list("cpu") if r.startswith("onnxruntime==")]
    assert [r for r in listed if r.startswith("onnxruntime")] == [f"onnxruntime-gpu=={cpu_runtime.split('==')[1]}"]


def test_the_device_list_names_what_the_issue_says_the_machine_has():
    have = gpu_stage.device_packages()
    assert {"python", "torch", "onnx", "onnxruntime", "numpy"} <= set(have)
    assert have["torch"].endswith("+cu130") and have["python"] == "3.12"
    assert "protobuf" not in have  # the service pins it exactly: its wheel travels


def test_the_plan_fills_each_call_to_the_room_left_by_the_tree():
    room = 35 * MIB
    wheels = {"a.whl": 5 * MIB, "b.whl": 3 * MIB}
    stream = 210 * MIB
    calls = gpu_stage.plan_calls(wheels, stream, room)
    assert all(c.payload <= room for c in calls)
    parts = [size for c in calls for name, size in c.files.items() if name.startswith(gpu_stage.PART_PREFIX)]
    assert sum(parts) == stream
    assert set(calls[0].files) >= {"wheels/a.whl", "wheels/b.whl"}
    assert not any(name.startswith("wheels/") for c in calls[1:] for name in c.files)
    assert len(calls) == 7  # 210 + 8 MiB over 35 - the manifest's room: 7 calls, the last one short
    assert [c.command for c in calls] == ["bash bench/gpu_check.sh --stage"] * 6 + ["bash bench/gpu_check.sh"]
    assert calls[-1].timeout_s <= 600 and calls[-1].run_s <= 480

    a = gpu_stage.Assumptions()
    seconds = gpu_stage.device_seconds(calls, 26 * MIB, a)
    assert seconds[0] > a.start_s and seconds[-1] > calls[-1].run_s
    text = gpu_stage.plan_text(calls, 26 * MIB, 64 * MIB, a, 720)
    assert "7. run(command=\"bash bench/gpu_check.sh\", carry=[\".gpu-stage/call-7\"]" in text
    assert "8. give_back()" in text and "within the 12-minute budget" in text

    with pytest.raises(ValueError, match="no room left for the parts"):
        gpu_stage.plan_calls(wheels, stream, 4 * MIB)  # the wheels alone fill the first call


def test_the_tree_size_is_what_git_would_send():
    tracked, untracked = gpu_stage.tree_bytes()
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    files = [ROOT / os.fsdecode(n) for n in listed.split(b"\0") if n]
    assert tracked == sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())
    assert 5 * MIB < tracked < 64 * MIB and untracked >= 0


def fake_stage(tmp_path: Path, codec: str, calls: int = 3) -> tuple[Path, bytes]:
    """A staging folder as gpu_stage.py writes it, for a small made-up 'wheel' and one small wheel."""
    wheel = os.urandom(300_000) + bytes(700_000)  # compressible
    if codec == "xz":
        stream = lzma.compress(wheel)
    else:
        if not shutil.which("zstd"):
            pytest.fail("zstd is missing: ./run.sh test installs Debian's zstd")
        stream = subprocess.run(["zstd", "-3", "-c"], input=wheel, capture_output=True, check=True).stdout
    stage = tmp_path / "stage"
    size = -(-len(stream) // calls)
    parts, sha = [], lambda b: hashlib.sha256(b).hexdigest()
    for i in range(calls):
        chunk = stream[i * size:(i + 1) * size]
        folder = stage / f"call-{i + 1}"
        folder.mkdir(parents=True)
        (folder / f"ort.whl.{i + 1:02d}").write_bytes(chunk)
        parts.append({"name": f"ort.whl.{i + 1:02d}", "call": i + 1, "bytes": len(chunk), "sha256": sha(chunk)})
    small = b"small wheel"
    (stage / "call-1" / "wheels").mkdir()
    (stage / "call-1" / "wheels" / "small-1.0-py3-none-any.whl").write_bytes(small)
    manifest = {"wheel": {"name": "onnxruntime_gpu-0-cp312-cp312-any.whl", "bytes": len(wheel), "sha256": sha(wheel)},
                "codec": codec, "stream": {"name": f"w.{codec}", "bytes": len(stream), "sha256": sha(stream)},
                "parts": parts,
                "wheels": [{"name": "small-1.0-py3-none-any.whl", "call": 1, "bytes": len(small), "sha256": sha(small)}]}
    for i in range(calls):
        (stage / f"call-{i + 1}" / "manifest.json").write_text(json.dumps(manifest))
    return stage, wheel


def carry(stage: Path, number: int, into: Path) -> Path:
    """What the device tool leaves in the repository copy for carry=[".gpu-stage/call-N"]."""
    folder = into / f"carried-{number}"
    folder.mkdir(parents=True)
    shutil.copytree(stage / f"call-{number}", folder / f"call-{number}")
    return folder


@pytest.mark.parametrize("codec", ["zst", "xz"])
def test_parts_taken_in_call_by_call_join_into_the_wheel(tmp_path, codec, capsys):
    stage, wheel = fake_stage(tmp_path, codec)
    dest = tmp_path / "device"
    for number in (1, 2):
        assert gpu_stage.receive(carry(stage, number, tmp_path), dest) == 0
    assert "2 of 3 parts" in capsys.readouterr().err
    assert gpu_stage.join(dest) == 1
    assert "still to carry: call 3" in capsys.readouterr().err
    assert gpu_stage.receive(carry(stage, 3, tmp_path), dest) == 0
    assert gpu_stage.join(dest) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.read_bytes() == wheel
    assert (dest / "wheels" / "small-1.0-py3-none-any.whl").read_bytes() == b"small wheel"


def test_a_part_broken_in_transfer_is_refused_and_named(tmp_path, capsys):
    stage, _ = fake_stage(tmp_path, "xz")
    part = stage / "call-2" / "ort.whl.02"
    part.write_bytes(part.read_bytes()[:-1] + b"\0")
    dest = tmp_path / "device"
    assert gpu_stage.receive(carry(stage, 1, tmp_path), dest) == 0
    assert gpu_stage.receive(carry(stage, 2, tmp_path), dest) == 1
    err = capsys.readouterr().err
    assert "ort.whl.02: size or sha256 differs" in err and "repeat this call" in err
    assert not (dest / "ort.whl.02").exists()


def test_the_check_stops_before_measuring_when_the_staging_is_incomplete(tmp_path):
    stage, _ = fake_stage(tmp_path, "xz")
    out = tmp_path / "out"
    done = gpu_check(STAGE_SRC=str(carry(stage, 1, tmp_path)), STAGE_DIR=str(tmp_path / "device"),
                     SITE=str(tmp_path / "site"), OUT=str(out), GPU_CHECK_EXPORT_AHEAD="0")
    assert done.returncode == 2, done.stdout + done.stderr
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert steps[0][:2] == ["stage", "ok"]
    assert steps[1][0] == "join" and steps[1][1].startswith("failed")
    assert {s[0] for s in steps if s[1] == "not run: the install failed"} == {"provider", "shipped", "service", "memory"}
    summary = (out / "summary.md").read_text()
    assert "Missing (a step not ok): join, install, provider, shipped, service, memory." in summary
    assert "still to carry: call 2, 3" in (out / "gpu_check.log").read_text()


def test_a_timing_step_cut_off_by_its_budget_keeps_what_it_measured(tmp_path):
    """gpu_check.sh stops a step with `timeout` (SIGTERM): the section still holds the rows measured before."""
    out = tmp_path / "section.md"
    done = subprocess.run(["timeout", "--kill-after=5", "14", sys.executable, str(ROOT / "bench" / "gpu_bench.py"),
                           "--shipped", "fmnist-resnet20-rbn", "--providers", "cpu", "--no-service",
                           "--batches", "1,2,4,8", "--seconds", "3", "--iters", "3", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 124, done.stderr[-2000:]
    text = out.read_text()
    assert "**Cut off** by the step's time budget" in text, text
    assert "| RBN folded | 1 |" in text and "| RBN folded | 8 |" not in text
