#!/usr/bin/env python3
"""A reference pipeline served the way the seed-style Custom Vision container serves it:
Flask's threaded server around the steps the object-detection script in Custom Vision's
exports takes (written here from the format reference, not copied): EXIF orientation, RGB,
about 512x512 pixels with the aspect kept and sides rounded to 32s, Pillow's default filter,
a session with free input height and width, the YOLOv2 decode and per-class NMS with the
script's stop rule.

    reference_flask.py MODEL_DIR PORT   (a YOLO-head detection export)
"""

import io
import math
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from flask import Flask, jsonify, request
from PIL import Image, ImageOps

folder, port = sys.argv[1], int(sys.argv[2])
model = onnx.load(f"{folder}/model.onnx")
for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
    dim.Clear()
    dim.dim_param = "side"
with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as free:
    free.write(model.SerializeToString())
session = ort.InferenceSession(free.name, providers=["CPUExecutionProvider"])
with open(f"{folder}/labels.txt") as handle:
    labels = handle.read().split()
metadata = {p.key: p.value for p in model.metadata_props}
biases = [float(v) for v in metadata["CustomVision.Postprocess.Yolo.Biases"].strip("[]").split(",")]
anchors = np.array(biases, np.float32).reshape(-1, 2)
scale = 1 / 255 if metadata.get("Image.NominalPixelRange") == "Normalized_0_1" else 1.0
THRESHOLD, IOU, MAX_DETECTIONS = 0.10, 0.45, 20
app = Flask(__name__)


def preprocess(data):
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    ratio = math.sqrt(512 * 512 / image.width / image.height)
    size = (32 * round(int(image.width * ratio) / 32), 32 * round(int(image.height * ratio) / 32))
    pixels = np.asarray(image.resize(size), np.float32) * scale
    return pixels.transpose(2, 0, 1)[None].copy()


def logistic(x):
    return 1 / (1 + np.exp(-x))


def decode(output):
    height, width = output.shape[2:]
    grid = output[0].transpose(1, 2, 0).reshape(height, width, len(anchors), -1)
    x = (logistic(grid[..., 0]) + np.arange(width)[None, :, None]) / width
    y = (logistic(grid[..., 1]) + np.arange(height)[:, None, None]) / height
    w = np.exp(grid[..., 2]) * anchors[:, 0] / width
    h = np.exp(grid[..., 3]) * anchors[:, 1] / height
    boxes = np.stack([x - w / 2, y - h / 2, w, h], -1).reshape(-1, 4)
    logits = grid[..., 5:]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True) * logistic(grid[..., 4])[..., None]
    probs = probs.reshape(-1, len(labels))
    keep = probs.max(1) > THRESHOLD
    boxes, probs = boxes[keep], probs[keep]
    best, classes = probs.max(1), probs.argmax(1)
    areas = boxes[:, 2] * boxes[:, 3]
    found = []
    while len(found) < min(MAX_DETECTIONS, len(boxes)):
        i = int(np.argmax(best))
        if best[i] < THRESHOLD:
            break
        found.append((float(best[i]), int(classes[i]), boxes[i].tolist()))
        left = np.maximum(boxes[i, 0], boxes[:, 0])
        top = np.maximum(boxes[i, 1], boxes[:, 1])
        right = np.minimum(boxes[i, 0] + boxes[i, 2], boxes[:, 0] + boxes[:, 2])
        bottom = np.minimum(boxes[i, 1] + boxes[i, 3], boxes[:, 1] + boxes[:, 3])
        overlap = np.maximum(0, right - left) * np.maximum(0, bottom - top)
        hit = overlap / (areas[i] + areas - overlap) > IOU
        hit[i] = True
        probs[hit, classes[i]] = 0
        best[hit], classes[hit] = probs[hit].max(1), probs[hit].argmax(1)
    return found


@app.post("/score")
def score():
    output = session.run(None, {session.get_inputs()[0].name: preprocess(request.get_data())})[0]
    return jsonify(
        [
            {
                "probability": p,
                "tagId": c,
                "tagName": labels[c],
                "boundingBox": dict(zip(("left", "top", "width", "height"), box, strict=True)),
            }
            for p, c, box in decode(output)
        ]
    )


print(f"listening on {port}", flush=True)
app.run("127.0.0.1", port, threaded=True)
