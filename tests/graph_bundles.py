"""Tiny hand-built ONNX graphs written as valid bundles: the faulty or slow models the service tests
need (a graph that fails on some batches, one that spins, one that fails on some inputs)."""

from __future__ import annotations

from pathlib import Path

from onnx import NodeProto, TensorProto, helper

from rbn.contract.bundle import write_bundle

STATS_LAYERS = 2  # width of the fake `rbn_stats` output


def write_graph_bundle(repo: Path, name: str, fields: dict, nodes: list[NodeProto], weights: list[TensorProto]) -> Path:
    """A BN bundle named ``name`` around ``nodes`` (which read the input and write ``logits`` and
    ``rbn_stats``), with ``fields`` (another bundle's model.json) lending the labels and input spec."""
    spec, labels, f32 = fields["input"], len(fields["labels"]), TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(spec["name"], f32, ["batch", spec["channels"], spec["height"], spec["width"]])],
        [helper.make_tensor_value_info("logits", f32, ["batch", labels]),
         helper.make_tensor_value_info("rbn_stats", f32, ["batch", STATS_LAYERS])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fields = {k: v for k, v in fields.items()
              if k not in ("onnx_sha256", "ood", "evaluation", "provenance", "baseline", "stats_channels")}
    fields.update(name=name, norm="bn", stats_layers=[f"layer{i}" for i in range(STATS_LAYERS)])
    return write_bundle(repo, fields, model.SerializeToString())
