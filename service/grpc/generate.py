"""Regenerate the committed stubs from ``grpc_service.proto`` (needs grpcio-tools, a dev dependency):

    python -m service.grpc.generate

protoc's output, with one change: the messages live in a descriptor pool of their own instead of
protobuf's default one. The protocol's message names (``inference.ModelInferRequest``, ...) are also
defined by tritonclient's stubs, and the default pool refuses a second definition of a name, so
without this a process could not import both (a test suite, a client tool built on both).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "service/grpc/grpc_service.proto"
MESSAGES = ROOT / "service/grpc/grpc_service_pb2.py"
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = ("POOL = _descriptor_pool.DescriptorPool()  # not Default(): see service/grpc/generate.py\n"
            "DESCRIPTOR = POOL.AddSerializedFile(")


def generate(out: Path = ROOT) -> None:
    """Write grpc_service_pb2.py, .pyi and _pb2_grpc.py under ``out`` (the repository root by default)."""
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}",
                    f"--grpc_python_out={out}", str(ROOT / PROTO)], check=True)
    messages = out / MESSAGES.relative_to(ROOT)
    text = messages.read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise RuntimeError(f"protoc's output changed: {DEFAULT_POOL!r} not found once in {messages}")
    messages.write_text(text.replace(DEFAULT_POOL, OWN_POOL))


if __name__ == "__main__":
    generate()
