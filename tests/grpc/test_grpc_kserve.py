"""KServe's own gRPC client (``kserve.InferenceGRPCClient``) against the server: health, model readiness and
ModelInfer, the outputs byte-equal to the REST binary path's. KServe's client registers the protocol's message
names in protobuf's default pool, as tritonclient.grpc does, so it cannot share a process with tritonclient:
it runs in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import tritonclient.http as thttp
from grpc_support import RBN, X

CLIENT = r"""
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

async def main(target, model):
    client = InferenceGRPCClient(target, timeout=30)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
    inp.set_data_from_numpy(x)
    answer = await client.infer(InferRequest(model_name=model, infer_inputs=[inp], request_id="kserve-1"))
    result = {"live": await client.is_server_live(), "ready": await client.is_server_ready(),
              "model_ready": await client.is_model_ready(model), "id": answer.id,
              "outputs": {o.name: o.as_numpy().astype("<f4").tobytes().hex() for o in answer.outputs}}
    await client.close()
    print(json.dumps(result))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_kserve_grpc_client(server):
    done = subprocess.run([sys.executable, "-c", CLIENT, server.target, RBN], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["live"] and result["ready"] and result["model_ready"] and result["id"] == "kserve-1"
    rest = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    t = thttp.InferInput("input", list(X.shape), "FP32")
    t.set_data_from_numpy(X, binary_data=True)
    answer = rest.infer(RBN, [t])
    assert sorted(result["outputs"]) == sorted(["logits", "rbn_stats", "rbn_channel_stats", "ood_score"])
    for name, data in result["outputs"].items():
        assert bytes.fromhex(data) == answer.as_numpy(name).tobytes(), name
