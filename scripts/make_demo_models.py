#!/usr/bin/env python3
"""Build small demo models with Custom Vision's export signatures, plus sample JPEGs.

They are made from plain ONNX operators and compute something checkable, so the default run
and the tests need nothing from outside the repository:

- `colors`: newer classification export (`data` [1,3,224,224] -> `model_output` [1,3]):
  the dominant colour of the image, red / green / blue, as a softmax over channel means.
- `colors-fp16`: the same with a float16 input, like the "OnnxFloat16" flavour.
- `squares`: newer compact detection export (`image_tensor` [1,3,320,320] ->
  `detected_boxes`, `detected_scores`, `detected_classes`): the bounding box of the saturated
  red, green and blue pixels; the score is how solidly the box is filled.
- `squares-yolo`: older YOLOv2-head detection export (`data` declared [1,3,416,416] ->
  `model_outputs0` [1,40,H/32,W/32], metadata ByPixelCountAlign32 at 512x512): fully
  convolutional like the real ones; each 32-pixel cell proposes a 160-pixel box around its
  centre, as sure as that box is filled with one saturated colour, of that colour.

Usage: make_demo_models.py [OUTPUT_DIR]   (default: .demo)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw

LABELS = ("red", "green", "blue")
CLASSIFICATION_SIZE = 224
DETECTION_SIZE = 320
SATURATED, DARK = 160.0, 96.0
# Squares drawn on the detection sample, in pixels of a 640x480 image: label -> box.
SQUARES = {"red": (64, 48, 224, 208), "blue": (384, 240, 544, 400)}
SQUARE_COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230)}
SAMPLE_SIZE = (640, 480)


def _metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _stretch_rgb_metadata(size: int, pixel_range: str) -> dict[str, str]:
    """The metadata keys newer exports carry, for an RGB input stretched to `size`."""
    return {
        "CustomVision.Metadata.Version": "1.2",
        "CustomVision.Preprocess.ResizeMethod": "Stretch",
        "CustomVision.Preprocess.TargetWidth": str(size),
        "CustomVision.Preprocess.TargetHeight": str(size),
        "CustomVision.Preprocess.CropMethod": "NoCrop",
        "Image.BitmapPixelFormat": "Rgb8",
        "Image.NominalPixelRange": pixel_range,
    }


def _finish(graph: onnx.GraphProto, props: dict[str, str]) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="scorer-demo"
    )
    model.ir_version = 8
    _metadata(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def classification_model(fp16: bool) -> onnx.ModelProto:
    """Softmax over 10x the per-channel mean of an RGB 0..1 image."""
    size = CLASSIFICATION_SIZE
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    nodes = []
    source = "data"
    if fp16:
        nodes.append(helper.make_node("Cast", ["data"], ["data_f32"], to=TensorProto.FLOAT))
        source = "data_f32"
    nodes += [
        helper.make_node("ReduceMean", [source], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["means", "sharpness"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["model_output"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "dominant_colour",
        [helper.make_tensor_value_info("data", elem, [1, 3, size, size])],
        [helper.make_tensor_value_info("model_output", TensorProto.FLOAT, [1, len(LABELS)])],
        [numpy_helper.from_array(np.array(10.0, np.float32), "sharpness")],
    )
    return _finish(
        graph,
        {
            **_stretch_rgb_metadata(size, "Normalized_0_1"),
            "CustomVision.Preprocess.NormalizeMean": "[0.0, 0.0, 0.0]",
            "CustomVision.Preprocess.NormalizeStd": "[1.0, 1.0, 1.0]",
        },
    )


def _saturated_mask(nodes: list[onnx.NodeProto], label: str, channel: int) -> str:
    """Nodes computing `<label>_mask`: 1.0 where the channel is saturated and the others
    dark (from the channels `ch0..ch2` and the constants `saturated` and `dark`)."""
    p = f"{label}_"
    others = [c for c in range(3) if c != channel]
    nodes += [
        helper.make_node("Greater", [f"ch{channel}", "saturated"], [p + "hi"]),
        helper.make_node("Less", [f"ch{others[0]}", "dark"], [p + "lo0"]),
        helper.make_node("Less", [f"ch{others[1]}", "dark"], [p + "lo1"]),
        helper.make_node("And", [p + "hi", p + "lo0"], [p + "and"]),
        helper.make_node("And", [p + "and", p + "lo1"], [p + "mask_b"]),
        helper.make_node("Cast", [p + "mask_b"], [p + "mask"], to=TensorProto.FLOAT),
    ]
    return p + "mask"


def _colour_box(nodes: list[onnx.NodeProto], label: str, channel: int) -> tuple[str, str]:
    """Nodes computing the [1,4] box and [1] score of one colour's saturated pixels."""
    p = f"{label}_"
    _saturated_mask(nodes, label, channel)
    nodes += [
        helper.make_node("ReduceMax", [p + "mask"], [p + "cols"], axes=[0, 1, 2], keepdims=0),
        helper.make_node("ReduceMax", [p + "mask"], [p + "rows"], axes=[0, 1, 3], keepdims=0),
        helper.make_node("ArgMax", [p + "cols"], [p + "x1i"], axis=0, keepdims=1),
        helper.make_node(
            "ArgMax", [p + "cols"], [p + "x2i"], axis=0, keepdims=1, select_last_index=1
        ),
        helper.make_node("ArgMax", [p + "rows"], [p + "y1i"], axis=0, keepdims=1),
        helper.make_node(
            "ArgMax", [p + "rows"], [p + "y2i"], axis=0, keepdims=1, select_last_index=1
        ),
        helper.make_node(
            "Concat", [p + "x1i", p + "y1i", p + "x2i", p + "y2i"], [p + "corners_i"], axis=0
        ),
        helper.make_node("Cast", [p + "corners_i"], [p + "corners"], to=TensorProto.FLOAT),
        # [x1, y1, x2 + 1, y2 + 1] / size: the box covers the last pixel too.
        helper.make_node("Add", [p + "corners", "end_offset"], [p + "edges"]),
        helper.make_node("Div", [p + "edges", "size"], [p + "box4"]),
        helper.make_node("Unsqueeze", [p + "box4", "axis0"], [p + "box"]),
        # Score: present (any pixel) x fill ratio of the box.
        helper.make_node("ReduceSum", [p + "mask"], [p + "area"], keepdims=0),
        helper.make_node("Sub", [p + "edges", p + "corners_start"], [p + "extent"]),
        helper.make_node("Gather", [p + "edges", "idx_start"], [p + "corners_start"]),
        helper.make_node("ReduceProd", [p + "extent"], [p + "box_area"], keepdims=0),
        helper.make_node("Max", [p + "box_area", "one"], [p + "safe_area"]),
        helper.make_node("Div", [p + "area", p + "safe_area"], [p + "fill"]),
        helper.make_node("Min", [p + "fill", "one"], [p + "score0"]),
        helper.make_node("Unsqueeze", [p + "score0", "axis0"], [p + "score"]),
    ]
    return p + "box", p + "score"


def detection_model() -> onnx.ModelProto:
    """Boxes of saturated red, green and blue pixels in an RGB 0..255 image."""
    size = DETECTION_SIZE
    nodes = [helper.make_node("Split", ["image_tensor", "split3"], ["ch0", "ch1", "ch2"], axis=1)]
    inits = [
        numpy_helper.from_array(np.array([1, 1, 1], np.int64), "split3"),
        numpy_helper.from_array(np.array(SATURATED, np.float32), "saturated"),
        numpy_helper.from_array(np.array(DARK, np.float32), "dark"),
        numpy_helper.from_array(np.array([0, 0, 1, 1], np.float32), "end_offset"),
        numpy_helper.from_array(np.array(float(size), np.float32), "size"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "idx_start"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.arange(len(LABELS), dtype=np.int64)[None], "detected_classes"),
    ]
    boxes, scores = [], []
    for channel, label in enumerate(LABELS):
        box, score = _colour_box(nodes, label, channel)
        boxes.append(box)
        scores.append(score)
    nodes += [
        helper.make_node("Concat", boxes, ["boxes_k4"], axis=0),
        helper.make_node("Unsqueeze", ["boxes_k4", "axis0"], ["detected_boxes"]),
        helper.make_node("Concat", scores, ["scores_k"], axis=0),
        helper.make_node("Unsqueeze", ["scores_k", "axis0"], ["detected_scores"]),
    ]
    # detected_classes is a constant output; Identity makes it a node output as exports have.
    inits[-1].name = "classes_const"
    nodes.append(helper.make_node("Identity", ["classes_const"], ["detected_classes"]))
    k = len(LABELS)
    graph = helper.make_graph(
        _sorted(nodes),
        "saturated_squares",
        [helper.make_tensor_value_info("image_tensor", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info("detected_boxes", TensorProto.FLOAT, [1, k, 4]),
            helper.make_tensor_value_info("detected_scores", TensorProto.FLOAT, [1, k]),
            helper.make_tensor_value_info("detected_classes", TensorProto.INT64, [1, k]),
        ],
        inits,
    )
    return _finish(graph, _stretch_rgb_metadata(size, "NominalRange_0_255"))


YOLO_ANCHORS = ((0.57273, 0.677385), (1.87446, 2.06253), (3.33843, 5.47434),
                (7.88282, 3.52778), (9.77052, 9.16828))  # fmt: skip
YOLO_BOX_CELLS = 5  # the box each cell proposes, in cells: 160 pixels


def _yolo_head_weights() -> tuple[np.ndarray, np.ndarray]:
    """The 1x1 convolution from per-cell colour fractions to the YOLO grid's channels.

    Anchor 0 does the work: tx = ty = 0 (the cell's centre), tw/th give a 5-cell box,
    objectness logit 30 x (filled fraction - 0.7), class logits 10 x each colour's fraction.
    The other anchors stay silent (objectness logit -20)."""
    depth = 5 + len(LABELS)
    weights = np.zeros((len(YOLO_ANCHORS) * depth, len(LABELS), 1, 1), np.float32)
    bias = np.zeros(len(YOLO_ANCHORS) * depth, np.float32)
    for anchor, (anchor_w, anchor_h) in enumerate(YOLO_ANCHORS):
        base = anchor * depth
        bias[base + 2] = np.log(YOLO_BOX_CELLS / anchor_w)
        bias[base + 3] = np.log(YOLO_BOX_CELLS / anchor_h)
        bias[base + 4] = -20.0
    weights[4, :, 0, 0] = 30.0
    bias[4] = -21.0
    for colour in range(len(LABELS)):
        weights[5 + colour, colour, 0, 0] = 10.0
    return weights, bias


def yolo_model() -> onnx.ModelProto:
    """Saturated-colour boxes as a YOLOv2-head export (RGB, 0..1)."""
    nodes = [helper.make_node("Split", ["data", "split3"], ["ch0", "ch1", "ch2"], axis=1)]
    masks = [_saturated_mask(nodes, label, channel) for channel, label in enumerate(LABELS)]
    half = YOLO_BOX_CELLS // 2
    nodes += [
        helper.make_node("Concat", masks, ["masks"], axis=1),
        helper.make_node(
            "AveragePool", ["masks"], ["cells"], kernel_shape=[32, 32], strides=[32, 32]
        ),
        helper.make_node(
            "AveragePool",
            ["cells"],
            ["windows"],
            kernel_shape=[YOLO_BOX_CELLS, YOLO_BOX_CELLS],
            pads=[half] * 4,
            count_include_pad=1,
        ),
        helper.make_node("Conv", ["windows", "head_w", "head_b"], ["model_outputs0"]),
    ]
    weights, bias = _yolo_head_weights()
    inits = [
        numpy_helper.from_array(np.array([1, 1, 1], np.int64), "split3"),
        numpy_helper.from_array(np.array(SATURATED / 255, np.float32), "saturated"),
        numpy_helper.from_array(np.array(DARK / 255, np.float32), "dark"),
        numpy_helper.from_array(weights, "head_w"),
        numpy_helper.from_array(bias, "head_b"),
    ]
    size, channels = 416, len(weights)
    graph = helper.make_graph(
        nodes,
        "saturated_squares_yolo",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info(
                "model_outputs0", TensorProto.FLOAT, [1, channels, size // 32, size // 32]
            )
        ],
        inits,
    )
    biases = [v for pair in YOLO_ANCHORS for v in pair]
    return _finish(
        graph,
        {
            "CustomVision.Metadata.Version": "1.2",
            "CustomVision.Postprocess.Method": "Yolo",
            "CustomVision.Postprocess.Yolo.Biases": json.dumps(biases),
            "CustomVision.Postprocess.Yolo.NmsThreshold": "0.45",
            "CustomVision.Preprocess.ResizeMethod": "ByPixelCountAlign32",
            "CustomVision.Preprocess.TargetWidth": "512",
            "CustomVision.Preprocess.TargetHeight": "512",
            "CustomVision.Preprocess.CropMethod": "NoCrop",
            "Image.BitmapPixelFormat": "Rgb8",
            "Image.NominalPixelRange": "Normalized_0_1",
        },
    )


def _sorted(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Topological order (the node lists above are written for reading, not execution)."""
    produced = {o for n in nodes for o in n.output}
    done: set[str] = set()
    ordered: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(i not in produced or i in done for i in n.input)]
        for node in ready:
            done.update(node.output)
        ordered += ready
        pending = [n for n in pending if n not in ready]
    return ordered


def _write_model(folder: Path, model: onnx.ModelProto, domain: str, flavor: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    manifest = {
        "DomainType": domain,
        "Platform": "ONNX",
        "Flavor": flavor,
        "ExporterVersion": "scorer-demo",
        "ModelFileName": "model.onnx",
        "LabelFileName": "labels.txt",
    }
    (folder / "cvexport.manifest").write_text(json.dumps(manifest, indent=2) + "\n")


def _noisy(size: tuple[int, int], colour: tuple[int, int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), colour, np.float32)
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_images(folder: Path) -> dict[str, object]:
    """Sample JPEGs and their expected answers."""
    folder.mkdir(parents=True, exist_ok=True)
    answers: dict[str, object] = {}
    colours = {"red": (200, 40, 30), "green": (30, 190, 60), "blue": (40, 50, 210)}
    for seed, (label, colour) in enumerate(colours.items()):
        _noisy((400, 300), colour, seed).save(folder / f"{label}.jpg", quality=90)
        answers[f"{label}.jpg"] = {"model": "colors", "label": label}
    scene = Image.new("RGB", SAMPLE_SIZE, (250, 250, 250))
    draw = ImageDraw.Draw(scene)
    width, height = SAMPLE_SIZE
    expected = []
    for label, (x1, y1, x2, y2) in SQUARES.items():
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=SQUARE_COLOURS[label])
        expected.append(
            {
                "label": label,
                "box": [x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height],
            }
        )
    scene.save(folder / "squares.jpg", quality=95)
    answers["squares.jpg"] = {"model": "squares", "detections": expected}
    (folder / "answers.json").write_text(json.dumps(answers, indent=2) + "\n")
    return answers


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else ".demo")
    _write_model(out / "models" / "colors", classification_model(False), "Classification", "ONNX")
    _write_model(
        out / "models" / "colors-fp16", classification_model(True), "Classification", "OnnxFloat16"
    )
    _write_model(out / "models" / "squares", detection_model(), "ObjectDetection", "ONNX")
    _write_model(out / "models" / "squares-yolo", yolo_model(), "ObjectDetection", "ONNX")
    write_images(out / "images")
    print(f"demo models and images written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
