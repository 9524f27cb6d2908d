"""`python -m scorer`: check settings and model, then serve HTTP and gRPC from one process.

The model is inspected (files only) before gunicorn forks, so a bad export stops the start
with one line. gunicorn's one worker then creates the ONNX Runtime session (once, after the
fork) and starts the gRPC server beside its HTTP threads, so both front ends share one
`Scorer`, one session and one in-flight budget.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from . import engine_cache
from .archive import ArchiveLimits, export_folder
from .auth import ApiKeys
from .core import Scorer, ScorerConfig
from .fetch import FetchPolicy
from .http import create_app
from .imaging import DecodeLimits
from .model import ModelError, ModelOptions, ModelSpec, YoloResize, cache_root, inspect_export
from .model_download import DownloadLimits
from .model_store import ModelStore, StoreError
from .settings import Settings, SettingsError, run_by_iot_edge
from .tls import TlsSource
from .tls import from_settings as tls_from_settings
from .watchdog import Watchdog
from .worker import ScorerWorker

if TYPE_CHECKING:  # onnxruntime is imported only after the fork; see session.py
    from .session import LoadedModel

log = logging.getLogger("scorer")


def one_line(error: BaseException) -> str:
    """An exception as one log line: our errors say it all; others also name their type."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (ModelError, RuntimeError)):
        return text
    return f"{type(error).__name__}: {text}"


def model_options(settings: Settings) -> ModelOptions:
    """The per-model choices the settings make."""
    return ModelOptions(
        pixel_format=settings.pixel_format,
        pixel_range=settings.pixel_range,
        yolo_sigmoid_xy=settings.yolo_sigmoid_xy,
        yolo_nms_per_class=settings.yolo_nms == "per_class",
        yolo_max_detections=settings.yolo_max_detections,
        yolo_prob_threshold=settings.yolo_prob_threshold,
        yolo_resize=YoloResize(settings.yolo_resize),
    )


def scorer_config(settings: Settings, spec: ModelSpec, version: str | None = None) -> ScorerConfig:
    """The core's configuration from the settings (`version`: the store's, when it serves)."""
    name = settings.model_name or (
        spec.directory.resolve().name if version is None else settings.model_dir.resolve().name
    )
    return ScorerConfig(
        model_name=name,
        model_version=version or settings.model_version or spec.sha256[:12],
        limits=DecodeLimits(
            settings.max_image_pixels, settings.jpeg_draft, settings.max_decode_bytes
        ),
        max_body_bytes=settings.max_body_bytes,
        default_threshold=settings.default_threshold,
        default_max_predictions=settings.default_max_predictions,
        max_inflight=settings.max_inflight,
        decode_budget_bytes=settings.decode_budget_bytes,
    )


def tensorrt_options(
    settings: Settings, spec: ModelSpec, onnxruntime_version: str
) -> dict[str, Any]:
    """TensorRT's options, its engine cache in a folder keyed by model, runtime and GPU."""
    from . import providers

    if not providers.gpu_device_nodes():
        return providers.tensorrt_options(settings.trt_fp16, None)  # no GPU: nothing to cache
    root = cache_root(spec.directory, settings.cache_dir)
    key = engine_cache.runtime_key(spec.sha256, onnxruntime_version, settings.trt_fp16)
    try:
        folder: Path | None = engine_cache.engine_folder(root, key)
    except OSError as error:
        # Without a cache TensorRT still runs; it rebuilds its engine at every start.
        log.warning("TensorRT engine cache not writable (%s): engines are not kept", error)
        folder = None
    return providers.tensorrt_options(settings.trt_fp16, folder)


class EngineBuildProgress:
    """Logs while a first TensorRT engine build runs (minutes on a Jetson) before ready."""

    def __init__(self, folder: str | None, interval_s: float = 30.0) -> None:
        self.folder = Path(folder) if folder else None
        self.building = self.folder is not None and not engine_cache.has_engine(self.folder)
        self.interval_s = interval_s
        self.done = threading.Event()
        self.started = time.monotonic()

    def __enter__(self) -> EngineBuildProgress:
        if self.building:
            log.info(
                "building the TensorRT engine into %s (first start with this model, runtime "
                "and GPU; minutes on a Jetson); ready when done",
                self.folder,
            )
            threading.Thread(target=self._tick, name="engine-progress", daemon=True).start()
        elif self.folder is not None:
            log.info("reusing the TensorRT engine in %s", self.folder)
        return self

    def _tick(self) -> None:
        while not self.done.wait(self.interval_s):
            log.info("still building the TensorRT engine (%.0f s)", self.elapsed())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.building and exc[0] is None:
            log.info("TensorRT engine built in %.0f s and cached", self.elapsed())


def session_opener(
    settings: Settings, chosen: list[str | tuple[str, dict[str, Any]]]
) -> Callable[[ModelSpec], LoadedModel]:
    """Opens a session for any model on the providers chosen at start; TensorRT's engine
    cache folder follows each model's hash."""
    import onnxruntime

    from . import providers, session

    level = logging.getLevelName(settings.log_level)

    def open_model(spec: ModelSpec) -> LoadedModel:
        per_model = [
            (providers.TENSORRT, tensorrt_options(settings, spec, onnxruntime.__version__))
            if isinstance(p, tuple) and p[0] == providers.TENSORRT
            else p
            for p in chosen
        ]
        return session.open_session(spec, per_model, level)

    return open_model


def load_model(scorer: Scorer, settings: Settings, opened: list[Callable[..., Any]]) -> None:
    """Pick providers, open the session and warm up; a failure ends the worker, and gunicorn.
    The opener goes into `opened` for model updates."""
    # Imported here, in the worker after the fork, never in the master: see session.py.
    import onnxruntime

    from . import providers

    try:
        trt = tensorrt_options(settings, scorer.spec, onnxruntime.__version__)
        chosen, fallbacks = providers.resolve(settings.providers, trt)
        scorer.provider_fallbacks = tuple(f.to_dict() for f in fallbacks)
        uses_tensorrt = any(isinstance(p, tuple) and p[0] == providers.TENSORRT for p in chosen)
        open_model = session_opener(settings, chosen)
        opened.append(open_model)
        with EngineBuildProgress(trt.get("trt_engine_cache_path") if uses_tensorrt else None):
            scorer.load(open_model)
    except Exception as error:
        log.critical("cannot start: %s", one_line(error))
        log.debug("why the model could not be loaded", exc_info=True)
        os._exit(Arbiter.WORKER_BOOT_ERROR)


def model_store(settings: Settings) -> ModelStore:
    root = settings.model_store or cache_root(settings.model_dir, settings.cache_dir) / "models"
    return ModelStore(root, settings.model_keep)


def model_updater(scorer: Scorer, settings: Settings, opened: list[Callable[..., Any]]) -> Any:
    """Installs and swaps in new model versions (twin `model`, or the admin route)."""
    from .model_update import ModelUpdater

    def open_model(spec: ModelSpec) -> LoadedModel:
        if not opened:
            raise RuntimeError("the first model is still loading")
        result: LoadedModel = opened[0](spec)
        return result

    return ModelUpdater(
        scorer,
        model_store(settings),
        inspect=lambda folder: inspect_export(folder, model_options(settings), settings.cache_dir),
        open_model=open_model,
        limits=DownloadLimits(
            settings.model_max_bytes, settings.model_download_timeout_s, settings.model_allow_http
        ),
        unpack_limits=ArchiveLimits(max_bytes=settings.model_max_bytes),
    )


def end_the_process(reason: str) -> None:
    """Leave at once with a failing status: gunicorn's master stops too, and IoT Edge (or
    whoever runs the scorer) starts it again on a fresh session and device context."""
    os._exit(Arbiter.WORKER_BOOT_ERROR)


def start_grpc(scorer: Scorer, settings: Settings, tls: TlsSource | None) -> Any:
    """Start the gRPC server on the worker's scorer; a port it cannot bind ends the worker."""
    # Imported after the fork, like onnxruntime: gRPC's core must not run in the master.
    from .rpc import create_server

    try:
        server, port = create_server(
            scorer,
            f"{settings.host}:{settings.grpc_port}",
            settings.grpc_max_calls,
            ApiKeys(settings.api_keys),
            tls,
        )
    except RuntimeError as error:
        log.critical("cannot start: %s", error)
        os._exit(Arbiter.WORKER_BOOT_ERROR)
    server.start()
    log.info("gRPC listening on %s:%d", settings.host, port)
    return server


def start_edge(scorer: Scorer, settings: Settings, updater: Any) -> Any:
    """Publish results to IoT Edge when run by it (or asked to); None otherwise."""
    if settings.edge == "off" or (settings.edge == "auto" and not run_by_iot_edge()):
        return None
    # Imported only here: outside IoT Edge the Azure SDK is not even loaded.
    from . import edge

    publisher = edge.EdgePublisher(
        scorer,
        updater,
        output=settings.edge_output,
        queue_size=settings.edge_queue_size,
        call_timeout_s=settings.edge_call_timeout_s,
        recreate_after_s=settings.edge_recreate_after_s,
        report_interval_s=settings.edge_report_interval_s,
    )
    scorer.sink = publisher.results
    publisher.start()
    return publisher


class ScorerServer(BaseApplication):
    """gunicorn, configured from `Settings`, with one worker that owns the model."""

    def __init__(
        self, settings: Settings, spec: ModelSpec, tls: TlsSource | None, version: str | None
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.version = version  # the store's promoted version, when it is the one served
        self.scorer: Scorer | None = None
        self.tls = tls  # the worker wraps HTTP connections with it
        self.grpc_server: Any = None
        self.edge_publisher: Any = None
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        config: dict[str, Any] = {
            "bind": [f"{s.host}:{s.http_port}"],
            "workers": 1,
            "worker_class": ScorerWorker,
            "threads": s.threads,
            "graceful_timeout": math.ceil(s.graceful_timeout_s),
            "timeout": 120,
            "keepalive": 75,
            "loglevel": s.log_level.lower(),
            "accesslog": None,
            # gunicorn's control socket would be written under $HOME; nothing here uses it.
            "control_socket_disable": True,
            "when_ready": self._when_ready,
        }
        for key, value in config.items():
            self.cfg.set(key, value)

    @staticmethod
    def _when_ready(server: Arbiter) -> None:
        for listener in server.LISTENERS:
            log.info("HTTP listening on %s", listener)

    def load(self) -> Any:
        """Runs in the worker after the fork: build the scorer, load the model in background."""
        scorer = Scorer(self.spec, scorer_config(self.settings, self.spec, self.version))
        self.scorer = scorer  # the worker counts what it refuses while reading requests
        opened: list[Callable[..., Any]] = []
        threading.Thread(
            target=load_model,
            args=(scorer, self.settings, opened),
            name="model-loader",
            daemon=True,
        ).start()
        updater = model_updater(scorer, self.settings, opened)
        Watchdog(scorer, self.settings.inference_timeout_s, end_the_process).start()
        self.grpc_server = start_grpc(scorer, self.settings, self.tls)
        if self.tls is not None:
            self.tls.keep_renewing()  # in the worker: its HTTP context and gRPC follow
        self.edge_publisher = start_edge(scorer, self.settings, updater)
        policy = None
        if self.settings.url_enabled:
            policy = FetchPolicy(
                self.settings.url_allowed_hosts,
                self.settings.max_body_bytes,
                self.settings.url_timeout_s,
            )
        return create_app(scorer, policy, ApiKeys(self.settings.api_keys), updater)


def main() -> int:
    """Entry point; returns the exit status."""
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"scorer: cannot start: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    folder, version = settings.model_dir, None
    try:
        promoted = model_store(settings).current()
    except StoreError as error:
        log.error("model store unreadable, serving %s: %s", settings.model_dir, error)
        promoted = None
    if promoted is not None:  # a model update was promoted: a restart serves it again
        folder = export_folder(model_store(settings).folder(promoted.version))
        version = promoted.version
    try:
        spec = inspect_export(folder, model_options(settings), settings.cache_dir)
    except Exception as error:
        log.critical("cannot start: %s", one_line(error))
        log.debug("why the export could not be read", exc_info=True)
        return 2
    try:
        tls = tls_from_settings(settings, os.environ)
    except (OSError, ValueError, KeyError) as error:
        log.critical("cannot start: no TLS certificate: %s", one_line(error))
        return 2
    log.info("serving %s: %s", folder, spec.summary())
    ScorerServer(settings, spec, tls, version).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
