"""How each server wants one image sent, and where its answer sits in what comes back.

The same PNG bytes go to every server, framed the way each one's documentation shows for an image:

- ``raw``: the bytes as the body (``Content-Type: image/png``): rbn-serve's /predict, Ray Serve (a
  Starlette request handed to the deployment);
- ``multipart``: one ``multipart/form-data`` file field: BentoML (an API parameter of a file type);
- ``oip``: the Open Inference Protocol's binary tensor extension, one BYTES element holding the
  image after a JSON header whose length ``Inference-Header-Content-Length`` gives (no base64):
  Triton (PyTriton). Its answer is one BYTES output, ``answer``, holding the same JSON document the
  others return;
- ``b64json``: KServe's v1 protocol as its custom-model docs show for images, ``{"instances":
  [{"image": {"b64": ...}}]}``. (KServe 0.21 accepts the binary extension on v2 but then turns every
  BYTES element into a UTF-8 string, which a PNG is not, so it answers 500; base64 is KServe's way.)

Standard library only: the harness runs it in the project's interpreter, the servers never need it.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass

BOUNDARY = "rbnpeersboundary7d1f"
OIP_INPUT = "image"  # the BYTES input of the KServe and Triton models
OIP_OUTPUT = "answer"  # the BYTES output: one JSON document per image


@dataclass(frozen=True)
class Request:
    """One request's body and headers (what wrk repeats)."""

    body: bytes
    headers: dict[str, str]


def frame(kind: str, image: bytes, field: str = "images") -> Request:
    """The request carrying ``image`` for a server that speaks ``kind`` (raw | multipart | oip | b64json)."""
    if kind == "raw":
        return Request(image, {"Content-Type": "image/png"})
    if kind == "multipart":
        head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="image.png"\r\n'
                "Content-Type: image/png\r\n\r\n").encode()
        return Request(head + image + f"\r\n--{BOUNDARY}--\r\n".encode(),
                       {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    if kind == "oip":
        element = struct.pack("<I", len(image)) + image  # BYTES elements are length-prefixed (little endian)
        header = json.dumps({
            "inputs": [{"name": OIP_INPUT, "shape": [1, 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(element)}}],
            "outputs": [{"name": OIP_OUTPUT, "parameters": {"binary_data": False}}],
        }, separators=(",", ":")).encode()
        return Request(header + element, {"Content-Type": "application/octet-stream",
                                          "Inference-Header-Content-Length": str(len(header))})
    if kind == "b64json":
        document = {"instances": [{"image": {"b64": base64.b64encode(image).decode()}}]}
        return Request(json.dumps(document).encode(), {"Content-Type": "application/json"})
    raise ValueError(f"unknown framing {kind!r}")


def first_prediction(kind: str, body: bytes) -> dict:
    """The first image's answer (label, index, probability, top_k, ood) from a server's response body."""
    document = json.loads(body)
    if kind == "oip":
        output = next(o for o in document["outputs"] if o["name"] == OIP_OUTPUT)
        document = json.loads(output["data"][0])
        return document["predictions"][0]
    if kind == "b64json":  # {"predictions": [one answer per instance]}
        return document["predictions"][0]
    if isinstance(document, list):  # a batchable API answering a list of one
        document = document[0]
    return document["predictions"][0]


def same_answer(got: dict, want: dict, tolerance: float = 1e-5) -> str | None:
    """None when ``got`` is ``want`` (labels exact, probabilities and the OOD score within
    ``tolerance``), else what differs."""
    if got["label"] != want["label"] or got["index"] != want["index"]:
        return f"label {got['label']!r} ({got['index']}) instead of {want['label']!r} ({want['index']})"
    if [t["index"] for t in got["top_k"]] != [t["index"] for t in want["top_k"]]:
        return f"top_k {got['top_k']} instead of {want['top_k']}"
    pairs = [(got["probability"], want["probability"])]
    pairs += [(g["probability"], w["probability"]) for g, w in zip(got["top_k"], want["top_k"], strict=True)]
    pairs.append((got["ood"]["score"], want["ood"]["score"]))
    for g, w in pairs:
        if abs(g - w) > tolerance:
            return f"value {g} instead of {w}"
    return None
