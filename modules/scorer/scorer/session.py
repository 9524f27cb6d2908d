"""The ONNX Runtime side of a model: one session per worker process, shared by all threads.

Import this module only after gunicorn has forked: a process that imported onnxruntime and
then forked aborts at exit in the child (std::system_error from ORT's static state).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from . import decode, providers
from .input_sizes import input_sizes
from .model import ModelError, ModelKind, ModelSpec
from .settings import Settings
from .vocabulary import Binding, Switch

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Preparation:
    """What the session prepares before it serves: IO binding for fixed-size inputs, and
    warm-up of every input size a pixel-count export sees (images up to `max_aspect`:1).
    Unless told otherwise, what a scorer does with its default settings (tests and
    benchmarks open sessions as it does)."""

    io_binding: Switch = Settings.io_binding
    warm_every_size: Switch = Settings.warm_every_size
    max_aspect: float = Settings.yolo_max_aspect


class BoundRuns:
    """Runs through IO bindings, each with its own input buffer kept on the session's device:
    a fixed-size input is copied into a buffer, with no allocation per run. A run takes a
    free binding and gives it back, so there are as many as runs ever ran at once (the
    scorer's slots bound them), not one per serving thread."""

    def __init__(self, session: ort.InferenceSession, spec: ModelSpec, device: Binding) -> None:
        self.session = session
        self.spec = spec
        self.device = device
        self._made: list[Any] = []  # every binding made: as many as the most runs at once
        self._free: queue.SimpleQueue[tuple[ort.OrtValue, Any]] = queue.SimpleQueue()

    def run(self, tensor: np.ndarray) -> list[Any]:
        """Raw outputs, through a free binding (a new one when all are in use)."""
        try:
            buffer, binding = self._free.get_nowait()
        except queue.Empty:
            buffer, binding = self._bind(tensor)
        else:
            buffer.update_inplace(tensor)
        try:
            self.session.run_with_iobinding(binding)
            outputs: list[Any] = binding.copy_outputs_to_cpu()
        finally:
            self._free.put((buffer, binding))
        return outputs

    def _bind(self, tensor: np.ndarray) -> tuple[ort.OrtValue, Any]:
        # A buffer of its own: from a numpy array, a CPU OrtValue would be that array's memory
        buffer = ort.OrtValue.ortvalue_from_shape_and_type(
            tensor.shape, tensor.dtype, self.device.value, 0
        )
        buffer.update_inplace(tensor)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.spec.input_name, buffer)
        for name in self.spec.output_names:
            binding.bind_output(name, "cpu")
        self._made.append(binding)
        return buffer, binding

    @property
    def made(self) -> int:
        """How many bindings (and device buffers) exist."""
        return len(self._made)


class LoadedModel:
    """One ONNX Runtime session around a `ModelSpec`; `predict` is safe from many threads."""

    def __init__(
        self,
        spec: ModelSpec,
        session: ort.InferenceSession,
        preparation: Preparation = Preparation(),
    ) -> None:
        self.spec = spec
        self.session = session
        self.providers: tuple[str, ...] = tuple(session.get_providers())
        on_gpu = self.providers[0] in providers.GPU_PREFERENCE
        prep = spec.preprocessing
        self.warm_sizes = (
            input_sizes(prep, preparation.max_aspect)
            if preparation.warm_every_size.applies(on_gpu)
            else (prep.crop_size or prep.target_size,)
        )
        self._sizes_run = set(self.warm_sizes)
        self.bound = (
            BoundRuns(session, spec, Binding.CUDA if on_gpu else Binding.CPU)
            if preparation.io_binding.applies(on_gpu)
            and all(isinstance(side, int) for side in spec.input_shape[2:])
            else None
        )

    @property
    def io_binding(self) -> Binding:
        """Where fixed-size inputs are bound: the device, or nowhere."""
        return self.bound.device if self.bound is not None else Binding.OFF

    def run(self, tensor: np.ndarray) -> list[Any]:
        """Raw outputs, in `spec.output_names` order."""
        if self.bound is not None:
            return self.bound.run(tensor)
        self._note_size(tensor.shape[3], tensor.shape[2])
        outputs: list[Any] = self.session.run(
            list(self.spec.output_names), {self.spec.input_name: tensor}
        )
        return outputs

    def _note_size(self, width: int, height: int) -> None:
        """Say once per size, when every size was warmed up, that a request brought one more."""
        size = (width, height)
        if len(self.warm_sizes) > 1 and size not in self._sizes_run:
            self._sizes_run.add(size)
            log.info(
                "input size %dx%d was not warmed up (an image more elongated than"
                " SCORER_YOLO_MAX_ASPECT): its first run pays for it",
                width,
                height,
            )

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
        """A run on a blank image of each size in `warm_sizes`, so that no request pays for
        lazy initialisation, a kernel search or an engine build."""
        for width, height in self.warm_sizes:
            shape = (1, 3, height, width)
            self.decode(self.run(np.zeros(shape, dtype=self.spec.preprocessing.dtype)))


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
    provider_list: Sequence[str | tuple[str, dict[str, Any]]],
    log_level: int = logging.INFO,
    threads: Threading = Threading(),
    preparation: Preparation = Preparation(),
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
        source = spec.graph if spec.graph is not None else str(spec.onnx_path)
        session = ort.InferenceSession(source, options, providers=provider_list)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ModelError(f"{spec.onnx_path}: ONNX Runtime cannot load it ({error})") from None
    return LoadedModel(spec, session, preparation)
