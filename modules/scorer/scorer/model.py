"""Open a Custom Vision ONNX export: its kind from the graph, its preprocessing from metadata.

`inspect_export` reads only files and never imports ONNX Runtime, so the gunicorn master can
check a model and fail fast before it forks; `session.open_session` builds the worker's session.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from . import decode, rewrites, upgrade
from .cache import cache_root
from .errors import ModelError as ModelError  # where callers have always found it
from .imaging import Preprocessing
from .vocabulary import (
    CropMethod,
    PixelFormat,
    PixelRange,
    ResizeMethod,
    VocabularyT,
    YoloResize,
)

log = logging.getLogger(__name__)

MANIFEST_FILE = "cvexport.manifest"
SIDECAR_METADATA_FILE = "metadata_properties.json"
BOX_OUTPUTS = ("detected_boxes", "detected_scores", "detected_classes")
_META = "CustomVision.Preprocess."
_YOLO = "CustomVision.Postprocess.Yolo."


class ModelKind(enum.Enum):
    """The export formats of the models README, told apart by their outputs."""

    CLASSIFICATION_ZIPMAP = ("classification", "ZipMap outputs (2018-2019)")
    CLASSIFICATION_TENSOR = ("classification", "probability tensor (2019-10 on)")
    DETECTION_BOXES = ("detection", "detected_boxes/scores/classes")
    DETECTION_YOLO = ("detection", "YOLOv2 grid (model_outputs0)")

    @property
    def task(self) -> str:
        return self.value[0]

    @property
    def description(self) -> str:
        return self.value[1]


# What the script in Custom Vision's YOLO exports does when the metadata says nothing.
YOLO_DEFAULT_RESIZE = ResizeMethod.BY_PIXEL_COUNT
YOLO_DEFAULT_TARGET = (512, 512)


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Operator overrides for what exports leave open (see the models README)."""

    pixel_format: PixelFormat | None = None  # None: as the export says
    pixel_range: PixelRange | None = None
    yolo_sigmoid_xy: bool = True
    yolo_nms_per_class: bool = True
    yolo_max_detections: int = 20
    yolo_prob_threshold: float = 0.10
    yolo_resize: YoloResize = YoloResize.EXPORT
    # Sized by pixel count, images beyond this width:height are sized as if at it (TensorRT)
    yolo_max_aspect: float | None = None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything about an export that serving needs, read without ONNX Runtime."""

    directory: Path
    onnx_path: Path
    sha256: str
    labels: tuple[str, ...]
    kind: ModelKind
    input_name: str
    input_shape: tuple[int | str, ...]
    output_names: tuple[str, ...]
    preprocessing: Preprocessing
    yolo: decode.YoloOptions | None
    metadata: Mapping[str, str]
    upgraded: bool
    # The graph to serve, when it was derived (upgraded, rewritten) and the cache could not
    # keep it: ONNX Runtime opens it from memory instead of `onnx_path`.
    graph: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        prep = self.preprocessing
        return (
            f"{self.kind.task} model, {self.kind.description}, {len(self.labels)} labels,"
            f" input {self.input_name}{list(self.input_shape)} {np.dtype(prep.dtype).name},"
            f" {'BGR' if prep.bgr else 'RGB'} {prep.pixel_range.value},"
            f" resize {prep.resize_method.value}"
            f" to {prep.target_size[0]}x{prep.target_size[1]}"
            + (f", crop {prep.crop_size[0]}x{prep.crop_size[1]}" if prep.crop_size else "")
            + (
                f", YOLO sigmoid(tx,ty)={self.yolo.sigmoid_xy},"
                f" NMS {'per class' if self.yolo.nms_per_class else 'global'}"
                f" IoU {self.yolo.nms_iou}, max {self.yolo.max_detections}"
                if self.yolo
                else ""
            )
            + (", upgraded from opset 1" if self.upgraded else "")
        )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (hashlib.file_digest is 3.11+)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def inside(directory: Path, name: str, field: str) -> Path:
    """`directory / name`, refusing a name from an export's files that leads out of it.

    A crafted `cvexport.manifest` could otherwise serve /etc/passwd as the labels.
    """
    path = directory / name
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        manifest = directory / MANIFEST_FILE
        raise ModelError(f"{manifest}: {field} {name!r} is outside the model folder")
    return path


def _model_files(directory: Path) -> tuple[Path, Path]:
    """model.onnx and labels.txt, or the names `cvexport.manifest` gives."""
    if not directory.is_dir():
        raise ModelError(f"{directory}: model folder does not exist")
    model_name, labels_name = "model.onnx", "labels.txt"
    manifest = directory / MANIFEST_FILE
    if manifest.exists():
        data = _read_json(manifest)
        model_name = str(data.get("ModelFileName") or model_name)
        labels_name = str(data.get("LabelFileName") or labels_name)
    model_path = inside(directory, model_name, "ModelFileName")
    labels_path = inside(directory, labels_name, "LabelFileName")
    for path in (model_path, labels_path):
        if not path.is_file():
            raise ModelError(
                f"{path}: missing (a Custom Vision export has {model_name} and {labels_name})"
            )
    return model_path, labels_path


def read_labels(path: Path) -> tuple[str, ...]:
    """One label per line, in the model's class order; blank trailing lines ignored."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}: cannot read labels ({error})") from None
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise ModelError(f"{path}: no labels")
    if len(set(labels)) != len(labels):
        raise ModelError(f"{path}: labels repeat")
    return labels


def _metadata(model: onnx.ModelProto, directory: Path) -> dict[str, str]:
    """ONNX metadata_props, filled in from the sidecar metadata_properties.json."""
    metadata: dict[str, str] = {}
    sidecar = directory / SIDECAR_METADATA_FILE
    if sidecar.exists():
        metadata.update({k: str(v) for k, v in _read_json(sidecar).items()})
    metadata.update({p.key: p.value for p in model.metadata_props})
    return metadata


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value.type.tensor_type.shape.dim
    )


def _is_map_output(value: onnx.ValueInfoProto) -> bool:
    kind = value.type.WhichOneof("value")
    if kind == "map_type":
        return True
    return kind == "sequence_type" and bool(value.type.sequence_type.elem_type.HasField("map_type"))


def _kind(model: onnx.ModelProto, path: Path) -> tuple[ModelKind, tuple[str, ...]]:
    outputs = list(model.graph.output)
    names = {o.name for o in outputs}
    if set(BOX_OUTPUTS) <= names:
        return ModelKind.DETECTION_BOXES, BOX_OUTPUTS
    maps = [o.name for o in outputs if _is_map_output(o)]
    if maps:
        return ModelKind.CLASSIFICATION_ZIPMAP, (maps[0],)
    floats = [
        o
        for o in outputs
        if o.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
    ]
    if len(floats) == 1 and len(_dims(floats[0])) == 4:
        return ModelKind.DETECTION_YOLO, (floats[0].name,)
    if len(floats) == 1 and len(_dims(floats[0])) == 2:
        return ModelKind.CLASSIFICATION_TENSOR, (floats[0].name,)
    signature = ", ".join(f"{o.name}:{o.type.WhichOneof('value')}{list(_dims(o))}" for o in outputs)
    raise ModelError(f"{path}: unknown Custom Vision signature (outputs {signature})")


def _check_label_count(
    model: onnx.ModelProto,
    kind: ModelKind,
    output: str,
    labels: tuple[str, ...],
    path: Path,
    anchors: int,
) -> None:
    count = len(labels)
    if kind is ModelKind.CLASSIFICATION_ZIPMAP:
        for node in model.graph.node:
            if node.op_type == "ZipMap" and output in node.output:
                for attr in node.attribute:
                    if attr.name == "classlabels_strings":
                        tags = [s.decode() for s in attr.strings]
                        if sorted(tags) != sorted(labels):
                            raise ModelError(
                                f"{path}: model tags {tags} differ from labels.txt {list(labels)}"
                            )
                    if attr.name == "classlabels_int64s" and len(attr.ints) != count:
                        raise ModelError(
                            f"{path}: model has {len(attr.ints)} classes, labels.txt {count}"
                        )
        return
    dims = next(_dims(o) for o in model.graph.output if o.name == output)
    if kind is ModelKind.CLASSIFICATION_TENSOR and isinstance(dims[1], int) and dims[1] != count:
        raise ModelError(f"{path}: model has {dims[1]} classes but labels.txt has {count}")
    expected_channels = anchors * (5 + count)
    if (
        kind is ModelKind.DETECTION_YOLO
        and dims[1] not in (expected_channels, "?")
        and (isinstance(dims[1], int))
    ):
        raise ModelError(
            f"{path}: output has {dims[1]} channels; {anchors} anchors x (5 + {count} labels)"
            f" need {expected_channels}"
        )


def _documented_format(image_input: onnx.ValueInfoProto) -> PixelFormat | None:
    """Colour order stated in the input's doc string, as the 2018 WinMLTools exports wrote it
    ("Image(s) in BGR format") when their metadata had no Image.BitmapPixelFormat."""
    doc = image_input.doc_string.upper()
    if "BGR FORMAT" in doc:
        return PixelFormat.BGR8
    if "RGB FORMAT" in doc:
        return PixelFormat.RGB8
    return None


def _said(metadata: Mapping[str, str], key: str, default: VocabularyT, path: Path) -> VocabularyT:
    """What the metadata says, in `default`'s vocabulary (`default` if it says nothing), or
    the error that names the key."""
    text = metadata.get(key)
    if text is None:
        return default
    try:
        return type(default)(text)
    except ValueError:
        raise ModelError(f"{path}: unsupported {key} {text!r}") from None


def _floats(text: str, key: str, path: Path) -> tuple[float, ...]:
    try:
        values = json.loads(text if text.strip().startswith("[") else f"[{text}]")
        return tuple(float(v) for v in values)
    except (ValueError, TypeError):
        raise ModelError(f"{path}: metadata {key}={text!r} is not a list of numbers") from None


def _size(metadata: Mapping[str, str], prefix: str, path: Path) -> tuple[int, int] | None:
    width, height = metadata.get(prefix + "Width"), metadata.get(prefix + "Height")
    if width is None or height is None:
        return None
    try:
        return int(width), int(height)
    except ValueError:
        raise ModelError(f"{path}: metadata {prefix}Width/Height are not numbers") from None


def _preprocessing(
    metadata: Mapping[str, str],
    input_shape: tuple[int | str, ...],
    dtype: type,
    options: ModelOptions,
    path: Path,
    input_doc_format: PixelFormat | None = None,
    kind: ModelKind | None = None,
) -> Preprocessing:
    fixed = isinstance(input_shape[2], int) and isinstance(input_shape[3], int)
    model_size = (int(input_shape[3]), int(input_shape[2])) if fixed else None
    yolo = kind is ModelKind.DETECTION_YOLO
    # The script of a YOLO export sizes by pixel count whatever the graph declares; the
    # graph's H and W are freed for it (`rewrites.free_image_dims`).
    sized_as_its_script = yolo and options.yolo_resize is YoloResize.EXPORT
    default_resize = YOLO_DEFAULT_RESIZE if sized_as_its_script else ResizeMethod.STRETCH
    resize = _said(metadata, _META + "ResizeMethod", default_resize, path)
    crop = _said(metadata, _META + "CropMethod", CropMethod.NONE, path)
    target = _size(metadata, _META + "Target", path)
    crop_size = _size(metadata, _META + "Crop", path)
    if sized_as_its_script:
        target = target or YOLO_DEFAULT_TARGET
        if resize is YOLO_DEFAULT_RESIZE:
            model_size = None
    elif yolo and model_size is not None:
        resize, target = ResizeMethod.STRETCH, model_size
    if crop is CropMethod.CENTER:
        crop_size = model_size or crop_size
        target = target or crop_size
    else:
        crop_size = None
        if model_size is not None:
            # A fixed input takes exactly its size, whatever the resize method says.
            resize, target = ResizeMethod.STRETCH, model_size
    if target is None:
        raise ModelError(
            f"{path}: input size is dynamic {list(input_shape)} and the metadata gives no"
            f" {_META}TargetWidth/TargetHeight"
        )
    pixel_format = options.pixel_format or _said(
        metadata, "Image.BitmapPixelFormat", input_doc_format or PixelFormat.RGB8, path
    )
    pixel_range = options.pixel_range or _said(
        metadata, "Image.NominalPixelRange", PixelRange.NOMINAL_0_255, path
    )
    mean = _floats(metadata.get(_META + "NormalizeMean", "[0,0,0]"), "NormalizeMean", path)
    std = _floats(metadata.get(_META + "NormalizeStd", "[1,1,1]"), "NormalizeStd", path)
    if len(mean) != 3 or len(std) != 3 or 0.0 in std:
        raise ModelError(f"{path}: NormalizeMean/NormalizeStd need three numbers, std not 0")
    return Preprocessing(
        target_size=target,
        resize_method=resize,
        crop_method=crop,
        crop_size=crop_size,
        bgr=pixel_format is PixelFormat.BGR8,
        pixel_range=pixel_range,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        dtype=dtype,
        max_aspect=options.yolo_max_aspect if resize is YOLO_DEFAULT_RESIZE else None,
    )


def _yolo_options(
    metadata: Mapping[str, str], options: ModelOptions, path: Path
) -> decode.YoloOptions:
    anchors: tuple[tuple[float, float], ...] = decode.DEFAULT_ANCHORS
    if _YOLO + "Biases" in metadata:
        biases = _floats(metadata[_YOLO + "Biases"], "Yolo.Biases", path)
        if len(biases) % 2:
            raise ModelError(f"{path}: Yolo.Biases has an odd count of numbers")
        anchors = tuple((biases[i], biases[i + 1]) for i in range(0, len(biases), 2))
    nms = float(metadata.get(_YOLO + "NmsThreshold", 0.45))
    return decode.YoloOptions(
        anchors=anchors,
        sigmoid_xy=options.yolo_sigmoid_xy,
        nms_per_class=options.yolo_nms_per_class,
        nms_iou=nms,
        prob_threshold=options.yolo_prob_threshold,
        max_detections=options.yolo_max_detections,
    )


def _free_image_dims(
    model: onnx.ModelProto, input_name: str, sha256: str, directory: Path, cache_dir: Path | None
) -> rewrites.Derived:
    """The copy of the graph with a free image height and width (cached)."""
    target = cache_root(directory, cache_dir) / f"free-dims-{sha256[:16]}.onnx"
    return rewrites.cached(target, lambda: rewrites.free_image_dims(model, input_name))


def inspect_export(
    directory: Path, options: ModelOptions = ModelOptions(), cache_dir: Path | None = None
) -> ModelSpec:
    """Read and check an export folder; upgrade legacy opset-1 graphs into the cache."""
    model_path, labels_path = _model_files(directory)
    labels = read_labels(labels_path)
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises many types for a bad file
        raise ModelError(f"{model_path}: not an ONNX model ({error})") from None
    sha256 = file_sha256(model_path)
    metadata = _metadata(model, directory)
    source, upgraded = rewrites.Derived(model_path), False
    if upgrade.needs_upgrade(model):
        try:
            source = upgrade.cached_upgrade(model_path, sha256, cache_root(directory, cache_dir))
        except ValueError as error:
            raise ModelError(f"{model_path}: legacy export cannot be upgraded ({error})") from None
        upgraded = True
        model = (
            onnx.load(str(source.path))
            if source.graph is None
            else onnx.load_from_string(source.graph)
        )
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{model_path}: expected one image input, found {len(inputs)}")
    image_input = inputs[0]
    shape = _dims(image_input)
    elem = image_input.type.tensor_type.elem_type
    if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise ModelError(f"{model_path}: input {image_input.name} must be float or float16")
    if len(shape) != 4 or shape[1] != 3:
        raise ModelError(f"{model_path}: input {image_input.name}{list(shape)} is not [N,3,H,W]")
    kind, outputs = _kind(model, model_path)
    yolo = (
        _yolo_options(metadata, options, model_path) if kind is ModelKind.DETECTION_YOLO else None
    )
    _check_label_count(
        model, kind, outputs[0], labels, model_path, len(yolo.anchors) if yolo else 0
    )
    dtype = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    preprocessing = _preprocessing(
        metadata, shape, dtype, options, model_path, _documented_format(image_input), kind
    )
    if preprocessing.resize_method is YOLO_DEFAULT_RESIZE and any(
        isinstance(side, int) for side in shape[2:]
    ):
        source = _free_image_dims(model, image_input.name, sha256, directory, cache_dir)
        shape = (*shape[:2], "height", "width")
    return ModelSpec(
        directory=directory,
        onnx_path=source.path,
        sha256=sha256,
        labels=labels,
        kind=kind,
        input_name=image_input.name,
        input_shape=shape,
        output_names=outputs,
        preprocessing=preprocessing,
        yolo=yolo,
        metadata=metadata,
        upgraded=upgraded,
        graph=source.graph,
    )
