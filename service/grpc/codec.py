"""The Open Inference Protocol's gRPC messages <-> the core's tensors and metadata.

Pure functions, no server: ``parse_infer`` (a ModelInferRequest -> the input tensor and the outputs to
send), ``encode_infer`` (the graph's outputs -> a ModelInferResponse, every tensor in
``raw_output_contents``, as Triton answers), and the metadata messages built from the same dicts the REST
side serves (``service.core.oip``). Errors are ``InvalidTensor`` with the REST side's messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rbn.contract.bundle import BundleMeta, graph_outputs
from service.core import oip
from service.core.errors import InvalidTensor
from service.grpc import grpc_service_pb2 as pb

DATATYPE = oip.DATATYPE  # FP32: the one datatype the REST side accepts too
TYPE_FP32 = pb.TYPE_FP32


@dataclass(frozen=True)
class ParsedInfer:
    x: np.ndarray  # float32 (N, C, H, W)
    outputs: list[str]  # names of the outputs to send, in order
    id: str


def parameter_value(param: pb.InferParameter) -> object:
    """An InferParameter's value (bool, int, str or float); None when none is set."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def input_bytes(request: pb.ModelInferRequest) -> int:
    """How many bytes of tensor data the request carries (raw and typed contents)."""
    raw = sum(len(r) for r in request.raw_input_contents)
    typed = sum(4 * len(t.contents.fp32_contents) for t in request.inputs)
    return raw + typed


def parse_infer(request: pb.ModelInferRequest, meta: BundleMeta, max_magnitude: float | None = None,
                max_response_bytes: int | None = None) -> ParsedInfer:
    """The input tensor (from ``raw_input_contents`` or ``contents.fp32_contents``) and the requested outputs,
    checked as the REST side checks them (``max_magnitude`` and ``max_response_bytes`` as in ``oip.parse_infer``)."""
    spec = meta.input
    inputs, raw = request.inputs, request.raw_input_contents
    if len(inputs) != 1:
        raise InvalidTensor(f"'inputs' must hold exactly one tensor, {spec.name!r}")
    if raw and len(raw) != len(inputs):
        raise InvalidTensor(f"raw_input_contents holds {len(raw)} entries for {len(inputs)} input(s); send one per input")
    tensor = inputs[0]
    name = tensor.name
    if name != spec.name:
        raise InvalidTensor(f"unknown input {name!r}; model {meta.name} takes {spec.name!r}")
    if tensor.datatype != DATATYPE:
        raise InvalidTensor(f"input {name!r} has datatype {tensor.datatype!r}; expected {DATATYPE}")
    shape = list(tensor.shape)
    expected = [spec.channels, spec.height, spec.width]
    if len(shape) != 4 or shape[0] < 1 or shape[1:] != expected:
        dims = ", ".join(map(str, expected))
        raise InvalidTensor(f"input {name!r} has shape {shape}; expected [batch, {dims}] with batch >= 1")
    count = shape[0] * spec.channels * spec.height * spec.width
    contents = tensor.contents if tensor.HasField("contents") else None
    if raw:
        if contents is not None and contents.ByteSize():
            raise InvalidTensor(f"input {name!r} has both contents and raw_input_contents; send one")
        data = raw[0]
        if len(data) != count * 4:
            raise InvalidTensor(f"input {name!r}: shape {shape} needs {count * 4} bytes of FP32, "
                                f"raw_input_contents holds {len(data)}")
        x = np.frombuffer(data, dtype="<f4").astype(np.float32)  # aligned, writable copy
    else:
        values = None if contents is None else contents.fp32_contents
        if not values:
            raise InvalidTensor(f"input {name!r} has no fp32_contents (nor raw_input_contents)")
        if len(values) != count:
            raise InvalidTensor(f"input {name!r}: shape {shape} needs {count} values, fp32_contents holds {len(values)}")
        x = np.array(values, dtype=np.float32)
    x = x.reshape(shape)
    if not np.isfinite(x).all():
        raise InvalidTensor(f"input {name!r} holds NaN or infinite values")
    if max_magnitude is not None:
        oip.check_magnitude(x, max_magnitude, name)  # the REST side's own check and message
    parsed = ParsedInfer(x, requested_outputs(request, list(graph_outputs(meta))), request.id)
    if max_response_bytes is not None:
        size = oip.answer_bytes(meta, [(n, True) for n in parsed.outputs], len(x))  # gRPC answers are binary
        if size > max_response_bytes:
            raise oip.ResponseTooLarge(f"the answer to this request could take {size} bytes, over the server's "
                                       f"max_response_bytes of {max_response_bytes}: request fewer images or outputs")
    return parsed


def requested_outputs(request: pb.ModelInferRequest, names: list[str]) -> list[str]:
    """The requested output names, in order; all of the model's outputs when none are named."""
    if not request.outputs:
        return names
    requested = []
    for item in request.outputs:
        if item.name not in names:
            raise InvalidTensor(f"unknown output {item.name[:64]!r}; the model gives {', '.join(names)}")
        if item.name in requested:
            raise InvalidTensor(f"output {item.name!r} is requested more than once; name each output once")
        if "classification" in item.parameters:
            raise InvalidTensor("the classification extension is not supported; request logits and take the top classes")
        requested.append(item.name)
    return requested


def encode_infer(meta: BundleMeta, request: ParsedInfer, tensors: dict[str, np.ndarray]) -> pb.ModelInferResponse:
    """Every requested output as little-endian FP32 bytes in ``raw_output_contents`` (the same bytes as the REST
    side's binary outputs), described in ``outputs``."""
    answer = pb.ModelInferResponse(model_name=meta.name, model_version=str(meta.version), id=request.id)
    for name in request.outputs:
        array = np.ascontiguousarray(tensors[name], dtype="<f4")
        answer.outputs.add(name=name, datatype=DATATYPE, shape=array.shape)
        answer.raw_output_contents.append(array.tobytes())
    return answer


def server_metadata() -> pb.ServerMetadataResponse:
    found = oip.server_metadata()
    return pb.ServerMetadataResponse(name=found["name"], version=found["version"], extensions=found["extensions"])


def _tensors(items: list[dict]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in items]


def model_metadata(meta: BundleMeta) -> pb.ModelMetadataResponse:
    found = oip.model_metadata(meta)
    return pb.ModelMetadataResponse(name=found["name"], versions=found["versions"], platform=found["platform"],
                                    inputs=_tensors(found["inputs"]), outputs=_tensors(found["outputs"]))


def model_config(meta: BundleMeta, max_batch_size: int) -> pb.ModelConfigResponse:
    """What Triton's config.pbtxt says of the model's tensors (dims without the batch axis)."""
    found = oip.model_metadata(meta)
    config = pb.ModelConfig(name=meta.name, platform=oip.PLATFORM, backend="onnxruntime", max_batch_size=max_batch_size)
    for item in found["inputs"]:
        config.input.add(name=item["name"], data_type=TYPE_FP32, dims=item["shape"][1:])
    for item in found["outputs"]:
        config.output.add(name=item["name"], data_type=TYPE_FP32, dims=item["shape"][1:])
    return pb.ModelConfigResponse(config=config)
