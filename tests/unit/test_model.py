"""Telling export formats apart from the graph, reading their metadata, refusing bad folders."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scorer.core import Scorer
from scorer.model import ModelError, ModelKind, ModelOptions, inspect_export
from scorer.vocabulary import PixelFormat, PixelRange, ResizeMethod, YoloResize


def _save(folder: Path, model: onnx.ModelProto, labels: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return folder


def zipmap_model(labels: list[str], size: int = 32) -> onnx.ModelProto:
    """A 2018-style export: BGR 0..255 input, Softmax, ZipMap `loss` and `classLabel`."""
    n = len(labels)
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["fc"], transB=1),
        helper.make_node("Softmax", ["fc"], ["probs"]),
        helper.make_node(
            "ZipMap", ["probs"], ["loss"], domain="ai.onnx.ml", classlabels_strings=labels
        ),
        helper.make_node("ArgMax", ["probs"], ["best"], axis=1, keepdims=1),
        helper.make_node(
            "ArrayFeatureExtractor", ["names", "best"], ["classLabel"], domain="ai.onnx.ml"
        ),
    ]
    weights = np.eye(n, 3, dtype=np.float32) / 10.0  # blue channel first: BGR
    loss_type = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(1, None))
    )
    graph = helper.make_graph(
        nodes,
        "zipmap",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, size, size])],
        [
            helper.make_tensor_value_info("classLabel", TensorProto.STRING, ["None", 1]),
            helper.make_value_info("loss", loss_type),
        ],
        [
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.zeros(n, np.float32), "B"),
            helper.make_tensor("names", TensorProto.STRING, [n], [s.encode() for s in labels]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 7), helper.make_opsetid("ai.onnx.ml", 1)]
    )
    model.ir_version = 3
    entry = model.metadata_props.add()
    entry.key, entry.value = "Image.BitmapPixelFormat", "Bgr8"
    return model


def yolo_model(labels: list[str], size: int = 64, anchors: int = 5) -> onnx.ModelProto:
    """A YOLOv2-head export: one grid output of A*(5+C) channels at 1/32 of the input."""
    channels = anchors * (5 + len(labels))
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", ["data"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]
            ),
            helper.make_node("Conv", ["pooled", "W"], ["model_outputs0"], kernel_shape=[1, 1]),
        ],
        "yolo",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info(
                "model_outputs0", TensorProto.FLOAT, [1, channels, size // 32, size // 32]
            )
        ],
        [numpy_helper.from_array(rng.normal(0, 2, (channels, 3, 1, 1)).astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in {
        "CustomVision.Postprocess.Method": "Yolo",
        "CustomVision.Postprocess.Yolo.Biases": "[1, 1, 2, 2, 3, 3, 4, 4, 5, 5]",
        "CustomVision.Postprocess.Yolo.NmsThreshold": "0.3",
        "Image.BitmapPixelFormat": "Rgb8",
        "Image.NominalPixelRange": "Normalized_0_1",
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


@pytest.mark.parametrize(
    ("name", "kind", "dtype", "size"),
    [
        ("colors", ModelKind.CLASSIFICATION_TENSOR, np.float32, (224, 224)),
        ("colors-fp16", ModelKind.CLASSIFICATION_TENSOR, np.float16, (224, 224)),
        ("squares", ModelKind.DETECTION_BOXES, np.float32, (320, 320)),
        ("squares-yolo", ModelKind.DETECTION_YOLO, np.float32, (512, 512)),
    ],
)
def test_demo_model_kinds(
    demo_dir: Path, name: str, kind: ModelKind, dtype: type, size: tuple[int, int]
) -> None:
    spec = inspect_export(demo_dir / "models" / name)
    assert spec.kind is kind
    assert spec.preprocessing.dtype is dtype
    assert spec.preprocessing.target_size == size
    assert spec.labels == ("red", "green", "blue")


def test_zipmap_export_kind_and_bgr_raw_pixels(tmp_path: Path) -> None:
    spec = inspect_export(_save(tmp_path / "m", zipmap_model(["a", "b", "c"]), ["a", "b", "c"]))
    assert spec.kind is ModelKind.CLASSIFICATION_ZIPMAP
    assert spec.output_names == ("loss",)
    assert spec.preprocessing.bgr and spec.preprocessing.pixel_range == "NominalRange_0_255"


def test_zipmap_export_scores_end_to_end(
    tmp_path: Path, make_scorer: Callable[..., Scorer]
) -> None:
    import io

    from PIL import Image

    folder = _save(tmp_path / "m", zipmap_model(["b", "g", "r"]), ["b", "g", "r"])
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (250, 5, 5)).save(buffer, "PNG")
    result = make_scorer(folder).score(buffer.getvalue())
    assert result.predictions[0].tag_name == "r"  # red lands in the third (BGR) plane


def test_yolo_export_kind_anchors_and_nms_from_metadata(tmp_path: Path) -> None:
    spec = inspect_export(_save(tmp_path / "m", yolo_model(["x", "y"]), ["x", "y"]))
    assert spec.kind is ModelKind.DETECTION_YOLO
    assert spec.yolo is not None
    assert spec.yolo.anchors == ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5))
    assert spec.yolo.nms_iou == pytest.approx(0.3)


def test_yolo_export_returns_boxes(tmp_path: Path, make_scorer: Callable[..., Scorer]) -> None:
    import io

    from PIL import Image

    folder = _save(tmp_path / "m", yolo_model(["x", "y"]), ["x", "y"])
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 80).convert("RGB").save(buffer, "PNG")
    result = make_scorer(folder, ModelOptions(yolo_prob_threshold=0.0)).score(buffer.getvalue())
    assert result.kind == "detection" and result.predictions
    assert all(p.box is not None and 0 <= p.box.left <= 1 for p in result.predictions)
    assert len(result.predictions) <= 20


def test_label_count_mismatch_names_the_file(demo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(demo_dir / "models" / "colors", folder)
    (folder / "labels.txt").write_text("red\ngreen\n")
    with pytest.raises(ModelError, match=r"model.onnx: model has 3 classes but labels.txt has 2"):
        inspect_export(folder)


def test_zipmap_tags_differing_from_labels(tmp_path: Path) -> None:
    folder = _save(tmp_path / "m", zipmap_model(["a", "b", "c"]), ["a", "b", "z"])
    with pytest.raises(ModelError, match=r"differ from labels\.txt"):
        inspect_export(folder)


def test_yolo_channels_not_fitting_labels(tmp_path: Path) -> None:
    folder = _save(tmp_path / "m", yolo_model(["x", "y"]), ["x", "y", "z"])
    with pytest.raises(ModelError, match="channels"):
        inspect_export(folder)


def test_missing_labels_file(demo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(demo_dir / "models" / "colors" / "model.onnx", folder)
    with pytest.raises(ModelError, match=r"labels.txt: missing"):
        inspect_export(folder)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        inspect_export(tmp_path / "nowhere")


def test_file_that_is_not_onnx(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x00garbage" * 10)
    (folder / "labels.txt").write_text("a\n")
    with pytest.raises(ModelError, match="not an ONNX model"):
        inspect_export(folder)


def test_unknown_signature(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["data"], ["index"], axis=1)],
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("index", TensorProto.INT64, [1, 1, 8, 8])],
    )
    folder = _save(tmp_path / "m", helper.make_model(graph), ["a"])
    with pytest.raises(ModelError, match="unknown Custom Vision signature"):
        inspect_export(folder)


def test_dynamic_input_needs_a_target_size(tmp_path: Path) -> None:
    model = onnx.load(str(_save(tmp_path / "z", zipmap_model(["a"]), ["a"]) / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(ModelError, match="TargetWidth"):
        inspect_export(_save(tmp_path / "m", model, ["a"]))
    for key, value in (("ResizeMethod", "Stretch"), ("TargetWidth", "48"), ("TargetHeight", "40")):
        entry = model.metadata_props.add()
        entry.key, entry.value = f"CustomVision.Preprocess.{key}", value
    spec = inspect_export(_save(tmp_path / "m2", model, ["a"]))
    assert spec.preprocessing.target_size == (48, 40)


def test_a_yolo_export_is_sized_as_its_script_does_on_a_graph_with_free_height_and_width(
    tmp_path: Path,
) -> None:
    """No resize metadata and a declared 64x64 input: ByPixelCountAlign32 at 512x512, served
    from a cached copy of the graph whose input height and width are symbolic."""
    folder = _save(tmp_path / "m", yolo_model(["x", "y"]), ["x", "y"])
    spec = inspect_export(folder, cache_dir=tmp_path / "cache")
    assert spec.preprocessing.resize_method is ResizeMethod.BY_PIXEL_COUNT
    assert spec.preprocessing.target_size == (512, 512)
    assert spec.input_shape == (1, 3, "height", "width")
    assert spec.onnx_path.parent == tmp_path / "cache"
    freed = onnx.load(str(spec.onnx_path))
    assert [d.dim_param for d in freed.graph.input[0].type.tensor_type.shape.dim[2:]] == [
        "height",
        "width",
    ]
    again = inspect_export(folder, cache_dir=tmp_path / "cache")  # the copy is reused
    assert again.onnx_path == spec.onnx_path
    stretched = inspect_export(folder, ModelOptions(yolo_resize=YoloResize.STRETCH))
    assert stretched.preprocessing.resize_method is ResizeMethod.STRETCH
    assert stretched.preprocessing.target_size == (64, 64)
    assert stretched.onnx_path == folder / "model.onnx" and stretched.input_shape[2:] == (64, 64)


def test_a_graph_the_cache_cannot_take_is_served_from_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache that refuses the write (here a file where its folder should be; a full or
    read-only volume in the field) must not stop the scorer: the derived graph is kept in
    memory and served, and the next start tries the cache again."""
    from scorer.session import open_session

    folder = _save(tmp_path / "m", yolo_model(["x", "y"]), ["x", "y"])
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache should be")
    with caplog.at_level("WARNING", logger="scorer.rewrites"):
        spec = inspect_export(folder, cache_dir=blocked / "cache")
    assert "serving that graph from memory" in caplog.text
    assert spec.graph is not None and not spec.onnx_path.exists()
    assert spec.input_shape == (1, 3, "height", "width")
    cached = inspect_export(folder, cache_dir=tmp_path / "cache")
    tensor = np.random.default_rng(0).random((1, 3, 416, 640), dtype=np.float32)
    (from_memory,) = open_session(spec, ["CPUExecutionProvider"]).run(tensor)
    (from_cache,) = open_session(cached, ["CPUExecutionProvider"]).run(tensor)
    assert np.array_equal(from_memory, from_cache)


def test_a_yolo_export_runs_a_3_by_2_photo_at_the_scripts_size(tmp_path: Path) -> None:
    from PIL import Image
    from scorer import imaging
    from scorer.session import open_session

    folder = _save(tmp_path / "m", yolo_model(["x", "y"]), ["x", "y"])
    spec = inspect_export(folder, cache_dir=tmp_path / "cache")
    photo = Image.effect_noise((3000, 2000), 80).convert("RGB")
    tensor = imaging.to_tensor(photo, spec.preprocessing)
    assert tensor.shape == (1, 3, 416, 640)  # 13 rows of cells, as the script's (not 14)
    (grid,) = open_session(spec, ["CPUExecutionProvider"]).run(tensor)
    assert grid.shape == (1, 5 * (5 + 2), 13, 20)


def test_sidecar_metadata_and_manifest_file_names(demo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    model = onnx.load(str(demo_dir / "models" / "colors" / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(folder / "exported.onnx"))
    (folder / "tags.txt").write_text("red\ngreen\nblue\n")
    (folder / "cvexport.manifest").write_text(
        json.dumps({"ModelFileName": "exported.onnx", "LabelFileName": "tags.txt"})
    )
    (folder / "metadata_properties.json").write_text(
        json.dumps({"Image.BitmapPixelFormat": "Bgr8", "Image.NominalPixelRange": "Normalized_0_1"})
    )
    spec = inspect_export(folder)
    assert spec.preprocessing.bgr and spec.preprocessing.pixel_range == "Normalized_0_1"


def test_operator_overrides_colour_order_and_range(demo_dir: Path) -> None:
    options = ModelOptions(pixel_format=PixelFormat.BGR8, pixel_range=PixelRange.NOMINAL_0_255)
    spec = inspect_export(demo_dir / "models" / "colors", options)
    assert spec.preprocessing.bgr and spec.preprocessing.pixel_range == "NominalRange_0_255"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("CustomVision.Preprocess.ResizeMethod", "Fit"),
        ("CustomVision.Preprocess.CropMethod", "TenCrop"),
        ("Image.BitmapPixelFormat", "Gray8"),
        ("Image.NominalPixelRange", "Normalized_0_255"),
    ],
)
def test_a_metadata_value_outside_its_vocabulary_is_refused_by_name(
    demo_dir: Path, tmp_path: Path, key: str, value: str
) -> None:
    model = onnx.load(str(demo_dir / "models" / "colors" / "model.onnx"))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    for name, said in [*kept, (key, value)]:
        entry = model.metadata_props.add()
        entry.key, entry.value = name, said
    folder = _save(tmp_path / "m", model, ["red", "green", "blue"])
    with pytest.raises(ModelError, match=f"unsupported {re.escape(key)} '{value}'"):
        inspect_export(folder)
