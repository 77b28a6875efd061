"""Open Inference Protocol v2 (KServe / Triton REST) codec: metadata, infer request parsing and
response encoding, including Triton's binary tensor data extension (what tritonclient sends by default).

Knows nothing of HTTP routes; errors are ``InvalidTensor`` (400), the protocol's status for bad requests.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import orjson

from rbn.contract.bundle import BundleMeta, graph_outputs
from service.core.errors import BodyTooLarge, InvalidTensor

DATATYPE = "FP32"
PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]


def server_metadata() -> dict:
    try:
        version = metadata.version("rbn-serve")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    return {"name": "rbn-serve", "version": version, "extensions": EXTENSIONS}


def model_metadata(meta: BundleMeta) -> dict:
    spec = meta.input
    return {
        "name": meta.name,
        "versions": [str(meta.version)],
        "platform": PLATFORM,
        "inputs": [{"name": spec.name, "datatype": DATATYPE, "shape": [-1, spec.channels, spec.height, spec.width]}],
        "outputs": [
            {"name": name, "datatype": DATATYPE, "shape": [-1, *dims]} for name, dims in graph_outputs(meta).items()
        ],
    }


class InputOutOfRange(InvalidTensor):
    """An FP32 input value beyond ``max_input_magnitude`` (400)."""

    code = "input_out_of_range"


class ResponseTooLarge(InvalidTensor):
    """The answer a request asks for could exceed ``max_response_bytes`` (400, before inference)."""

    code = "response_too_large"


@dataclass(frozen=True)
class ParsedInfer:
    x: np.ndarray  # float32 (N, C, H, W)
    outputs: list[tuple[str, bool]]  # (output name, as binary data)
    id: str | None = None


STEP = 1024 * 1024  # inflate and scan in steps this size: no step holds the GIL for long


def decompress(body: bytes, encoding: str | None, limit: int, max_commas: int | None = None) -> bytes:
    """Undo Content-Encoding gzip/deflate (tritonclient's request compression), never beyond ``limit``
    bytes, in 1 MiB steps; with ``max_commas``, stop as soon as the output holds more commas (a JSON
    body inflating to more values than any request may hold)."""
    if not encoding or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise InvalidTensor(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    pieces, size, commas, pending = [], 0, 0, body
    try:
        while True:
            piece = inflater.decompress(pending, STEP)
            pending = inflater.unconsumed_tail
            size += len(piece)
            if size > limit:
                raise BodyTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
            if max_commas is not None:
                commas += piece.count(b",")
                if commas > max_commas:
                    raise TooManyValues()
            pieces.append(piece)
            if not pending and (inflater.eof or not piece):
                break
    except zlib.error as exc:
        raise InvalidTensor(f"cannot decompress the {encoding} body: {exc}") from None
    if not inflater.eof:
        raise InvalidTensor(f"truncated compressed body: the {encoding} stream ends before its end marker")
    return b"".join(pieces)


class TooManyValues(InvalidTensor):
    def __init__(self) -> None:
        super().__init__("the JSON request holds more values than max_queue_size images; split the request")


def count_capped(data: bytes, sub: bytes, cap: int, start: int = 0, end: int | None = None) -> int:
    """``data.count(sub)`` in 1 MiB windows, raising TooManyValues as soon as it exceeds ``cap``
    (one count over 16 MB would hold the GIL for about 20 ms). ``sub`` is one byte."""
    end = len(data) if end is None else end
    total = 0
    for at in range(start, end, STEP):
        total += data.count(sub, at, min(at + STEP, end))
        if total > cap:
            raise TooManyValues()
    return total


def read_infer(body: bytes, encoding: str | None, header_length: str | None, meta: BundleMeta, limit: int,
               max_images: int | None = None, max_magnitude: float | None = None,
               max_response_bytes: int | None = None) -> ParsedInfer:
    """``decompress`` then ``parse_infer``: a request body as received -> the parsed request.

    With ``max_images``, a JSON part holding more commas than that many images' values (plus slack for
    the other fields) is refused before parsing: orjson and numpy hold the GIL while they parse, so
    parsing an oversized list would stall the event loop from any thread. ``max_magnitude`` and
    ``max_response_bytes`` go to ``parse_infer``."""
    cap = None
    if max_images is not None:
        spec = meta.input
        cap = max_images * spec.channels * spec.height * spec.width + 1024
    body = decompress(body, encoding, limit, cap if header_length is None else None)
    if cap is not None:
        head_end = int(header_length) if header_length is not None and _digits(header_length) else len(body)
        count_capped(body, b",", cap, 0, min(head_end, len(body)))
    return parse_infer(body, header_length, meta, max_magnitude, max_response_bytes)


def _digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def parse_infer(body: bytes, header_length: str | None, meta: BundleMeta, max_magnitude: float | None = None,
                max_response_bytes: int | None = None) -> ParsedInfer:
    """Decode an infer request (JSON, or JSON header + binary tensors) for ``meta``'s input.

    With ``max_magnitude``, an input value of larger absolute value is refused (``InputOutOfRange``);
    with ``max_response_bytes``, a request whose answer could exceed it (``answer_bytes``) is refused
    (``ResponseTooLarge``): both before any inference, and before the answer is built."""
    head, tail = body, b""
    if header_length is not None:
        # ASCII digits only: str.isdigit() also accepts '²' and '٣', which int() refuses or misreads
        if not _digits(header_length) or int(header_length) > len(body):
            raise InvalidTensor(f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(body)} bytes")
        head, tail = body[: int(header_length)], body[int(header_length) :]
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidTensor(f"request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidTensor("request must be a JSON object with 'inputs'")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidTensor("'id' must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidTensor(f"'inputs' must hold exactly one tensor, {meta.input.name!r}")
    x, used = _input_tensor(inputs[0], tail, meta)
    if used != len(tail):
        raise InvalidTensor(f"{len(tail) - used} bytes of binary data are not claimed by any input")
    if max_magnitude is not None:
        check_magnitude(x, max_magnitude, meta.input.name)
    params = request.get("parameters")
    binary = _flag({} if params is None else params, "binary_data_output")
    parsed = ParsedInfer(x, _requested_outputs(request.get("outputs"), binary, list(graph_outputs(meta))), request_id)
    if max_response_bytes is not None:
        size = answer_bytes(meta, parsed.outputs, len(x))
        if size > max_response_bytes:
            raise ResponseTooLarge(
                f"the answer to this request could take {size} bytes, over the server's max_response_bytes of "
                f"{max_response_bytes}: request fewer images, fewer outputs, or binary_data outputs")
    return parsed


def check_magnitude(x: np.ndarray, bound: float, name: str) -> None:
    """Refuse values beyond +-``bound``: near float32's limit (3.4e38) the model's first layer
    overflows and the answer comes back as nulls. In 1 MiB steps, like every scan of a body."""
    flat = x.reshape(-1)
    step = STEP // 4
    for at in range(0, len(flat), step):
        if float(np.abs(flat[at: at + step]).max(initial=0.0)) > bound:
            raise InputOutOfRange(f"input {name!r} holds values beyond +-{bound:g} (max_input_magnitude); "
                                  "send preprocessed values")


JSON_VALUE_BYTES = 16  # the longest float32 orjson writes ("-1.1754944e-38") and its comma
ENTRY_BYTES = 128  # an output's name, datatype, shape and punctuation


def answer_bytes(meta: BundleMeta, outputs: list[tuple[str, bool]], images: int) -> int:
    """An upper bound of the answer's size, from the request alone (``encode_infer`` writes at most this)."""
    dims = graph_outputs(meta)
    size = 256  # model name, version, id (the id is part of the request, already bounded by the body limit)
    for name, binary in outputs:
        values = images * int(np.prod(dims[name]))
        size += ENTRY_BYTES + values * (4 if binary else JSON_VALUE_BYTES)
    return size


def _flag(params: object, key: str, default: bool = False) -> bool:
    if not isinstance(params, dict):
        raise InvalidTensor("'parameters' must be an object")
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidTensor(f"parameter {key!r} must be true or false")
    return value


def _input_tensor(tensor: dict, tail: bytes, meta: BundleMeta) -> tuple[np.ndarray, int]:
    spec = meta.input
    name = tensor.get("name")
    if name != spec.name:
        raise InvalidTensor(f"unknown input {name!r}; model {meta.name} takes {spec.name!r}")
    if tensor.get("datatype") != DATATYPE:
        raise InvalidTensor(f"input {name!r} has datatype {tensor.get('datatype')!r}; expected {DATATYPE}")
    shape = tensor.get("shape")
    expected = [spec.channels, spec.height, spec.width]
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(d) is int for d in shape)
            or shape[0] < 1 or shape[1:] != expected):
        dims = ", ".join(map(str, expected))
        raise InvalidTensor(f"input {name!r} has shape {shape}; expected [batch, {dims}] with batch >= 1")
    count = shape[0] * spec.channels * spec.height * spec.width
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidTensor("'parameters' must be an object")
    used = 0
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if type(size) is not int or size != count * 4 or size > len(tail):
            raise InvalidTensor(f"input {name!r}: binary_data_size {size!r} must be {count * 4} bytes and present in the body")
        x = np.frombuffer(tail, dtype="<f4", count=count).astype(np.float32)  # aligned, writable copy
        used = size
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidTensor(f"input {name!r} has no 'data' list (nor binary_data_size)")
        try:
            x = np.asarray(data, dtype=np.float32)
        except (ValueError, TypeError):
            raise InvalidTensor(f"input {name!r}: 'data' must be numbers in a flat or shape-nested list") from None
        if x.size != count:
            raise InvalidTensor(f"input {name!r}: shape {shape} needs {count} values, 'data' holds {x.size}")
    x = x.reshape(shape)
    if not np.isfinite(x).all():
        raise InvalidTensor(f"input {name!r} holds NaN or infinite values")
    return x, used


def _requested_outputs(outputs: object, binary_default: bool, names: list[str]) -> list[tuple[str, bool]]:
    """(name, as binary) for each requested output; all of the model's outputs when none are named."""
    if outputs is None:
        return [(name, binary_default) for name in names]
    if not isinstance(outputs, list) or not outputs:
        raise InvalidTensor("'outputs' must be a non-empty list")
    if len(outputs) > len(names):  # bounded before the loop: each name may be asked for once
        raise InvalidTensor(f"'outputs' lists {len(outputs)} entries but the model gives {len(names)} outputs "
                            f"({', '.join(names)}): an output is requested more than once; name each output once")
    requested: list[tuple[str, bool]] = []
    for item in outputs:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in names:
            raise InvalidTensor(f"unknown output {str(name)[:64]!r}; the model gives {', '.join(names)}")
        if any(name == seen for seen, _ in requested):
            raise InvalidTensor(f"output {name!r} is requested more than once; name each output once")
        params = item.get("parameters") or {}
        if isinstance(params, dict) and "classification" in params:
            raise InvalidTensor("the classification extension is not supported; request logits and take the top classes")
        requested.append((name, _flag(params, "binary_data", binary_default)))
    return requested


def encode_infer(meta: BundleMeta, request: ParsedInfer, tensors: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str], str]:
    """The response body, extra headers and media type (JSON, or JSON header + binary tensors)."""
    answer: dict = {"model_name": meta.name, "model_version": str(meta.version)}
    if request.id is not None:
        answer["id"] = request.id
    outputs, chunks = [], []
    for name, binary in request.outputs:
        array = np.ascontiguousarray(tensors[name], dtype="<f4")
        entry: dict = {"name": name, "datatype": DATATYPE, "shape": list(array.shape)}
        if binary:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    answer["outputs"] = outputs
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, {}, "application/json"
    return head + b"".join(chunks), {HEADER_LENGTH: str(len(head))}, "application/octet-stream"
