"""The server a user would write first: one session, session.run per request, no batching.

    RBN_BENCH_MODEL=models/fmnist-resnet20-rbn uvicorn bench.naive_server:app --port 8001
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from PIL import Image

bundle = Path(os.environ.get("RBN_BENCH_MODEL", "models/fmnist-resnet20-rbn"))
meta = json.loads((bundle / "model.json").read_text())
session = ort.InferenceSession(str(bundle / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
mean, std = meta["input"]["mean"][0], meta["input"]["std"][0]
app = FastAPI()


@app.post("/predict")
async def predict(request: Request):
    image = Image.open(io.BytesIO(await request.body())).convert("L").resize((28, 28))
    x = (np.asarray(image, dtype=np.float32)[None, None] / 255.0 - mean) / std
    (logits,) = session.run(["logits"], {"input": x})
    p = np.exp(logits[0] - logits[0].max())
    p /= p.sum()
    top = int(p.argmax())
    return {"label": meta["labels"][top], "probability": float(p[top])}
