"""The CUDA provider's options from the settings (cuDNN algorithm search, arena limit and growth, preloading
pip's CUDA libraries). No GPU here: what is tested is what the service asks ONNX Runtime for, the settings'
validation and the CLI flags; bench/gpu_check.sh measures them on a GPU."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime
import pytest
from pydantic import ValidationError

from service.core import runtime
from service.core.config import Settings
from service.core.runtime import CudaOptions, cuda_provider_options, provider_list, should_preload


def test_heuristic_is_the_default_and_exhaustive_is_opt_in():
    assert Settings().cuda_conv_algo_search == "HEURISTIC"
    assert cuda_provider_options(0) == {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC",
                                        "arena_extend_strategy": "kNextPowerOfTwo"}
    settings = Settings(cuda_device=1, cuda_conv_algo_search="EXHAUSTIVE", cuda_mem_limit_bytes=2 << 30,
                        cuda_arena_extend_strategy="kSameAsRequested")
    assert cuda_provider_options(CudaOptions.from_settings(settings)) == {
        "device_id": "1", "cudnn_conv_algo_search": "EXHAUSTIVE", "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": str(2 << 30)}


@pytest.mark.parametrize("field, value", [("cuda_conv_algo_search", "FASTEST"), ("cuda_mem_limit_bytes", -1),
                                          ("cuda_arena_extend_strategy", "grow"), ("cuda_preload_dlls", "yes")])
def test_bad_values_fail_at_start_up(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_the_environment_sets_them(monkeypatch):
    monkeypatch.setenv("RBN_SERVE_CUDA_CONV_ALGO_SEARCH", "EXHAUSTIVE")
    monkeypatch.setenv("RBN_SERVE_CUDA_MEM_LIMIT_BYTES", "1073741824")
    options = CudaOptions.from_settings(Settings())
    assert (options.conv_algo_search, options.mem_limit_bytes) == ("EXHAUSTIVE", 1 << 30)


def test_preload_outside_the_image_only(tmp_path):
    conf = tmp_path / "rbn-serve-nvidia.conf"
    assert should_preload("auto", conf)  # bare metal: pip's nvidia-* wheels are on no library path
    conf.write_text("/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib\n")
    assert not should_preload("auto", conf)  # the image registered them with ldconfig
    assert should_preload("always", conf) and not should_preload("never", tmp_path / "absent")


def test_the_cpu_path_asks_for_no_cuda_and_preloads_nothing(monkeypatch):
    called = []
    monkeypatch.setattr(runtime, "_preloaded", False)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda *a, **k: called.append(a), raising=False)
    assert provider_list("cpu", CudaOptions(preload_dlls="always")) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert provider_list("auto", CudaOptions(preload_dlls="always")) == ["CPUExecutionProvider"]
    assert called == []


def test_the_serve_flags_exist():
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--help"], capture_output=True, text=True,
                          timeout=60, check=True)
    for flag in ("--cuda-conv-algo-search", "--cuda-mem-limit-bytes", "--cuda-arena-extend-strategy",
                 "--cuda-preload-dlls"):
        assert flag in done.stdout
