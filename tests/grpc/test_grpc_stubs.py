"""The committed stubs are what protoc makes of the .proto, the .proto is wire-compatible with the protocol's
published definition (as tritonclient ships it), and service/grpc keeps to its layer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tritonclient.grpc import service_pb2 as triton_pb2

from service.grpc import generate
from service.grpc import grpc_service_pb2 as pb
from tests.test_layers import violations

GENERATED = ["grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py"]


def test_committed_stubs_are_protocs_output(tmp_path):
    assert importlib.util.find_spec("grpc_tools") is not None  # grpcio-tools: a dev dependency
    (tmp_path / "service" / "grpc").mkdir(parents=True)
    generate.generate(tmp_path)
    for name in GENERATED:
        made = (tmp_path / "service" / "grpc" / name).read_text()
        assert made == (generate.ROOT / "service" / "grpc" / name).read_text(), f"{name}: run python -m service.grpc.generate"


def _fields(descriptor) -> dict:
    return {f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None)
            for f in descriptor.fields}


def _messages(descriptor):
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _messages(nested)


def test_every_message_and_method_matches_the_published_definition():
    """Names, field numbers, types and labels of every message we define equal Triton's; our ModelConfig,
    ModelInput and ModelOutput are subsets of its model_config.proto; our methods are its methods."""
    from tritonclient.grpc import model_config_pb2

    theirs = {**{m.full_name: m for top in triton_pb2.DESCRIPTOR.message_types_by_name.values() for m in _messages(top)},
              **{m.full_name: m for top in model_config_pb2.DESCRIPTOR.message_types_by_name.values() for m in _messages(top)}}
    checked = 0
    for top in pb.DESCRIPTOR.message_types_by_name.values():
        for ours in _messages(top):
            assert ours.full_name in theirs, ours.full_name
            mine, published = _fields(ours), _fields(theirs[ours.full_name])
            for name, spec in mine.items():
                assert published.get(name) == spec, f"{ours.full_name}.{name}: {spec} vs {published.get(name)}"
            checked += 1
    assert checked >= 20
    assert pb.DataType.items() == model_config_pb2.DataType.items()
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    published = triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    for method in service.methods:
        other = published.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (other.input_type.full_name,
                                                                              other.output_type.full_name)


def test_serialized_bytes_read_back_by_tritonclient():
    request = pb.ModelInferRequest(model_name="m", model_version="1", id="x", raw_input_contents=[b"\x00" * 8])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.outputs.add(name="logits").parameters["classification"].int64_param = 3
    theirs = triton_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.SerializeToString() == request.SerializeToString()
    assert theirs.inputs[0].shape == [1, 2] and theirs.outputs[0].parameters["classification"].int64_param == 3


def test_grpc_front_end_keeps_to_its_layer():
    forbidden = ("torch", "fastapi", "uvicorn", "starlette.applications", "service.tools", "service.cli",
                 "rbn.library", "rbn.experiments", "service.http.routes", "service.http.app", "service.http.server")
    assert violations("service/grpc", forbidden) == []
    assert Path(generate.__file__).parent.name == "grpc"
