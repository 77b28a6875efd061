"""Open Inference Protocol v2 shapes: metadata, infer request (open: the protocol lets clients add
keys) and infer response (closed), and the protocol's error answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.http.routes.schemas.common import Closed, examples


class V2Error(Closed):
    model_config = examples({"error": "unknown model 'nope'"})
    error: str


# --- Open Inference Protocol v2 -------------------------------------------------------------
class ServerMetadata(Closed):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(Closed):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(Closed):
    model_config = examples({
        "name": "fmnist-resnet20-rbn", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "rbn_stats", "datatype": "FP32", "shape": [-1, 21]},
                    {"name": "rbn_channel_stats", "datatype": "FP32", "shape": [-1, 784]},
                    {"name": "ood_score", "datatype": "FP32", "shape": [-1, 1]}],
    })
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferInputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="row-major values, flat or nested; omitted with binary_data_size")


class InferRequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = examples({
        "id": "42",
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [-0.81] * 784}],
        "outputs": [{"name": "logits"}, {"name": "ood_score"}],
    })
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor]
    outputs: list[InferRequestedOutput] | None = None


class InferOutputTensor(Closed):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(Closed):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), json_schema_extra={"examples": [{
        "model_name": "fmnist-resnet20-rbn", "model_version": "1", "id": "42",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10},
                    {"name": "ood_score", "datatype": "FP32", "shape": [1, 1], "data": [-0.41]}],
    }]})
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]
