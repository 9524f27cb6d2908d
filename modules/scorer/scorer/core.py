"""The scoring core: image bytes in, `Result` out. Knows nothing of Flask, gRPC or Azure."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from . import imaging
from .decode import LabelMismatch, Prediction
from .errors import Code, ScoringError
from .metrics import ScorerMetrics
from .model import ModelSpec
from .vocabulary import Binding

if TYPE_CHECKING:  # onnxruntime is imported only after the fork; see session.py
    from .session import LoadedModel

__all__ = ["Code", "Result", "ScoreOptions", "Scorer", "ScorerConfig", "ScoringError"]

log = logging.getLogger(__name__)

# What ONNX Runtime's CUDA and TensorRT providers say when the device, not the input, failed.
DEVICE_ERROR = re.compile(
    r"CUDA failure|CUDA error|cudaError|CUBLAS_STATUS|CUDNN_STATUS|illegal memory access|"
    r"device-side assert|TensorRT EP execution context enqueue fail",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """Per-request choices; `None` takes the scorer's defaults."""

    threshold: float | None = None
    max_predictions: int | None = None

    def validate(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ScoringError(Code.INVALID_ARGUMENT, "threshold must be between 0 and 1")
        if self.max_predictions is not None and self.max_predictions < 0:
            raise ScoringError(Code.INVALID_ARGUMENT, "maxPredictions must be 0 (all) or more")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Milliseconds per stage of one request."""

    decode_ms: float
    inference_ms: float
    total_ms: float


@dataclasses.dataclass(frozen=True)
class Result:
    """One scored image, shaped like Custom Vision's container response plus what ops need."""

    id: str
    created: str
    predictions: tuple[Prediction, ...]
    model_name: str
    model_version: str
    kind: str
    timing: Timing
    provider: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of ARCHITECTURE.md."""
        predictions = []
        for p in self.predictions:
            item: dict[str, Any] = {
                "probability": p.probability,
                "tagId": p.tag_id,
                "tagName": p.tag_name,
            }
            if p.box is not None:
                item["boundingBox"] = dataclasses.asdict(p.box)
            predictions.append(item)
        return {
            "id": self.id,
            "project": "",
            "iteration": "",
            "created": self.created,
            "predictions": predictions,
            "model": {"name": self.model_name, "version": self.model_version, "kind": self.kind},
            "timing": {
                "decodeMs": round(self.timing.decode_ms, 3),
                "inferenceMs": round(self.timing.inference_ms, 3),
                "totalMs": round(self.timing.total_ms, 3),
            },
            "provider": self.provider,
        }


class ResultSink(Protocol):
    """Where results go besides the reply (IoT Edge); `publish` must never block or raise."""

    def publish(self, result: Result) -> None: ...


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    """What the core needs from the settings."""

    model_name: str
    model_version: str
    limits: imaging.DecodeLimits = imaging.DecodeLimits()
    max_body_bytes: int = 8 * 1024 * 1024
    default_threshold: float = 0.0
    default_max_predictions: int = 0
    max_inflight: int = 16
    decode_budget_bytes: int = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class Served:
    """The model that answers, with the name and version results carry. A request takes it
    once and keeps it: a swap while it runs changes only the requests after."""

    model: LoadedModel
    name: str
    version: str


def utc_timestamp(timespec: str = "milliseconds") -> str:
    """Now in UTC, ISO 8601 with a `Z`, as results and reported properties carry it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec=timespec).replace("+00:00", "Z")


def warmed_up(model: LoadedModel, name: str) -> LoadedModel:
    """`model` after a run on a blank image of each input size it will get, so no request
    pays for lazy initialisation."""
    started = time.perf_counter()
    model.warm_up()
    log.info(
        "model %s ready on %s (warm-up of %d input size%s in %.0f ms; IO binding %s)",
        name,
        ", ".join(model.providers),
        len(model.warm_sizes),
        "" if len(model.warm_sizes) == 1 else "s",
        (time.perf_counter() - started) * 1000,
        "off" if model.io_binding is Binding.OFF else f"on {model.io_binding.value}",
    )
    return model


class Scorer:
    """Scores images with one shared session; thread-safe; not ready until warmed up."""

    def __init__(self, spec: ModelSpec, config: ScorerConfig) -> None:
        self.spec = spec
        self.config = config
        self.metrics = ScorerMetrics()
        self._served: Served | None = None
        self._ready_listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.max_inflight)
        self._decode_budget = imaging.DecodeBudget(config.decode_budget_bytes)
        self.default_threshold = config.default_threshold
        self.default_max_predictions = config.default_max_predictions
        self.sink: ResultSink | None = None
        # GPU providers `auto` dropped, as {"provider", "reason", "detail"}: set before load.
        self.provider_fallbacks: tuple[dict[str, str], ...] = ()
        self._running: dict[int, float] = {}  # inference id -> when it started (monotonic)
        self._next_run = itertools.count()
        self.failure: str | None = None  # set once the session can no longer be trusted

    @property
    def ready(self) -> bool:
        return self._served is not None and self.failure is None

    @property
    def served(self) -> Served | None:
        return self._served

    def fail(self, reason: str) -> None:
        """Mark the scorer broken for good (a hung inference, a lost GPU): not ready again."""
        with self._lock:
            if self.failure is None:
                self.failure = reason
                log.critical("scorer failed: %s", reason)

    def longest_inference_s(self) -> float:
        """How long the oldest inference now running has been running (0 when none is)."""
        with self._lock:
            started = min(self._running.values(), default=None)
        return 0.0 if started is None else time.monotonic() - started

    def _run(self, model: LoadedModel, tensor: Any) -> list[Any]:
        """One inference, timed for the watchdog; a device error fails the scorer."""
        run_id = next(self._next_run)
        with self._lock:
            self._running[run_id] = time.monotonic()
        try:
            return model.run(tensor)
        except Exception as error:
            if DEVICE_ERROR.search(str(error)):
                self.fail(f"the execution provider reported a device error: {error}")
            raise
        finally:
            with self._lock:
                del self._running[run_id]

    @property
    def providers(self) -> tuple[str, ...]:
        return self._served.model.providers if self._served else ()

    def load(self, open_model: Callable[[ModelSpec], LoadedModel]) -> None:
        """Open the session, warm it up, then mark the scorer ready."""
        model = warmed_up(open_model(self.spec), self.config.model_name)
        for fallback in self.provider_fallbacks:
            self.metrics.provider_fallback.labels(fallback["provider"], fallback["reason"]).set(1)
        self.swap(model, self.config.model_name, self.config.model_version)
        with self._lock:
            listeners, self._ready_listeners = self._ready_listeners, []
        for listener in listeners:
            listener()

    def swap(self, model: LoadedModel, name: str, version: str) -> None:
        """Serve `model` (already warm) from now on. Requests in flight finish on the one
        they took; the previous session is released when the last of them is done."""
        with self._lock:
            before, self._served = self._served, Served(model, name, version)
            self.spec = model.spec
        if before is not None:
            self.metrics.model.remove(
                before.name, before.version, before.model.spec.kind.task, before.model.providers[0]
            )
        self.metrics.model.labels(name, version, model.spec.kind.task, model.providers[0]).set(1)

    def when_ready(self, listener: Callable[[], None]) -> None:
        """Call `listener` once the model is warm (at once if it already is)."""
        with self._lock:
            if self._served is None:
                self._ready_listeners.append(listener)
                return
        listener()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one in-flight slot (shared by every front end) or fail with OVERLOADED now.

        Errors raised while the slot is held are counted by code here, once for all front ends.
        """
        if not self._slots.acquire(blocking=False):
            self.metrics.error(Code.OVERLOADED.value)
            raise ScoringError(
                Code.OVERLOADED,
                f"{self.config.max_inflight} requests are being scored; retry shortly",
            )
        self.metrics.inflight.inc()
        try:
            yield
        except ScoringError as error:
            self.metrics.error(error.code.value)
            raise
        except Exception:
            self.metrics.error(Code.INTERNAL.value)
            raise
        finally:
            self.metrics.inflight.dec()
            self._slots.release()

    def model_info(self) -> dict[str, Any]:
        """What `GET /model` and gRPC `GetModel` report."""
        served = self._served
        spec = served.model.spec if served else self.spec
        prep = spec.preprocessing
        return {
            "name": served.name if served else self.config.model_name,
            "version": served.version if served else self.config.model_version,
            "kind": spec.kind.task,
            "format": spec.kind.description,
            "labels": list(spec.labels),
            "inputName": spec.input_name,
            "inputShape": [d if isinstance(d, int) else -1 for d in spec.input_shape],
            "inputType": "float16" if prep.dtype.__name__ == "float16" else "float32",
            "providers": list(served.model.providers if served else ()),
            "providerFallbacks": list(self.provider_fallbacks),
            "sha256": spec.sha256,
            "ready": self.ready,
            "warmInputSizes": len(served.model.warm_sizes) if served else 0,
            "ioBinding": (served.model.io_binding if served else Binding.OFF).value,
        }

    def score(self, image: bytes, options: ScoreOptions = ScoreOptions()) -> Result:
        """Decode, preprocess, run and post-process one image."""
        options.validate()
        served = self._served
        if self.failure is not None:
            raise ScoringError(Code.NOT_READY, f"the scorer is restarting: {self.failure}")
        if served is None:
            raise ScoringError(Code.NOT_READY, "the model is still loading; retry shortly")
        result = self.score_on(served, image, options)
        timing = result.timing
        self.metrics.observe(
            timing.decode_ms / 1000, timing.inference_ms / 1000, timing.total_ms / 1000
        )
        if self.sink is not None:
            self.sink.publish(result)
        return result

    def score_on(
        self, served: Served, image: bytes, options: ScoreOptions = ScoreOptions()
    ) -> Result:
        """`score` on a given model (the served one, or a candidate being checked), neither
        counted in the metrics nor published."""
        if not image:
            raise ScoringError(Code.EMPTY_BODY, "no image bytes in the request")
        model, prep = served.model, served.model.spec.preprocessing
        started = time.perf_counter()
        picture = imaging.decode_image(image, self.config.limits, prep, self._decode_budget)
        tensor = imaging.to_tensor(picture, prep)
        decoded = time.perf_counter()
        outputs = self._run(model, tensor)
        inferred = time.perf_counter()
        try:
            predictions = model.decode(outputs)
        except LabelMismatch as error:
            raise ScoringError(
                Code.INTERNAL, f"model output does not fit labels.txt: {error}"
            ) from None
        threshold = self.default_threshold if options.threshold is None else options.threshold
        limit = (
            self.default_max_predictions
            if options.max_predictions is None
            else options.max_predictions
        )
        kept = [p for p in predictions if p.probability >= threshold]
        if limit:
            kept = kept[:limit]
        finished = time.perf_counter()
        return Result(
            id=str(uuid.uuid4()),
            created=utc_timestamp(),
            predictions=tuple(kept),
            model_name=served.name,
            model_version=served.version,
            kind=model.spec.kind.task,
            timing=Timing(
                (decoded - started) * 1000, (inferred - decoded) * 1000, (finished - started) * 1000
            ),
            provider=model.providers[0],
        )
