#!/usr/bin/env python3
"""The naive app a user might write: Flask's threaded server, PIL, one session, no limits.

naive_flask.py MODEL_DIR PORT   (a classification export with a fixed input size)
"""

import io
import sys

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request
from PIL import Image

folder, port = sys.argv[1], int(sys.argv[2])
session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
with open(f"{folder}/labels.txt") as handle:
    labels = handle.read().split()
data = session.get_inputs()[0]
names = [o.name for o in session.get_outputs() if o.name != "classLabel"]
height, width = data.shape[2], data.shape[3]
app = Flask(__name__)


@app.post("/score")
def score():
    image = Image.open(io.BytesIO(request.get_data())).convert("RGB").resize((width, height))
    tensor = np.asarray(image, np.float32).transpose(2, 0, 1)[None][:, ::-1].copy()
    outputs = dict(zip(names, session.run(names, {data.name: tensor}), strict=True))
    scores = outputs.get("loss", next(iter(outputs.values())))  # 2018 exports: a ZipMap
    if isinstance(scores, list):
        probabilities = [scores[0][label] for label in labels]
    else:
        probabilities = scores[0]
    return jsonify(
        [
            {"tagName": t, "probability": float(p)}
            for t, p in zip(labels, probabilities, strict=True)
        ]
    )


print(f"listening on {port}", flush=True)
app.run("127.0.0.1", port, threaded=True)
