"""The ONNX Runtime side of a model: one session per worker process, shared by all threads.

Import this module only after gunicorn has forked: a process that imported onnxruntime and
then forked aborts at exit in the child (std::system_error from ORT's static state).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import onnxruntime as ort

from . import decode, providers
from .model import ModelError, ModelKind, ModelSpec


class LoadedModel:
    """One ONNX Runtime session around a `ModelSpec`; `predict` is safe from many threads."""

    def __init__(self, spec: ModelSpec, session: ort.InferenceSession) -> None:
        self.spec = spec
        self.session = session
        self.providers: tuple[str, ...] = tuple(session.get_providers())

    def run(self, tensor: np.ndarray) -> list[Any]:
        """Raw outputs, in `spec.output_names` order."""
        outputs: list[Any] = self.session.run(
            list(self.spec.output_names), {self.spec.input_name: tensor}
        )
        return outputs

    def decode(self, outputs: list[Any]) -> list[decode.Prediction]:
        """Predictions from raw outputs, by export format."""
        labels = self.spec.labels
        kind = self.spec.kind
        if kind is ModelKind.CLASSIFICATION_ZIPMAP:
            return decode.classification(decode.zipmap_probabilities(outputs[0], labels), labels)
        if kind is ModelKind.CLASSIFICATION_TENSOR:
            return decode.classification(outputs[0], labels)
        if kind is ModelKind.DETECTION_BOXES:
            boxes, scores, classes = outputs
            return decode.detected_boxes(boxes, scores, classes, labels)
        assert self.spec.yolo is not None
        return decode.yolo(outputs[0], labels, self.spec.yolo)

    def warm_up(self) -> None:
        """One run on a blank image, so the first request does not pay for lazy init."""
        width, height = self.spec.preprocessing.crop_size or self.spec.preprocessing.target_size
        blank: np.ndarray = np.zeros((1, 3, height, width), dtype=self.spec.preprocessing.dtype)
        self.decode(self.run(blank))


@dataclasses.dataclass(frozen=True)
class Threading:
    """ONNX Runtime's intra-op thread pool: its size (0: one thread per core) and whether its
    threads spin after a run. Spinning answers a lone request sooner on a quiet device;
    not spinning leaves the cores to the front end and the cameras under load
    (docs/BENCHMARKS.md has the figures)."""

    intra_op_threads: int = 0
    spinning: bool = False


def open_session(
    spec: ModelSpec,
    provider_list: list[str | tuple[str, dict[str, Any]]],
    log_level: int = logging.INFO,
    threads: Threading = Threading(),
) -> LoadedModel:
    """Create the session with the given providers, ONNX Runtime's logs through `logging`."""
    severity = providers.ort_severity(log_level)
    ort.set_default_logger_severity(severity)  # ONNX Runtime's own log, at our level
    options = ort.SessionOptions()
    options.log_severity_level = severity
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads.intra_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if threads.spinning else "0"
    )
    try:
        session = ort.InferenceSession(str(spec.onnx_path), options, providers=provider_list)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ModelError(f"{spec.onnx_path}: ONNX Runtime cannot load it ({error})") from None
    return LoadedModel(spec, session)
