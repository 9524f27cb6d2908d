"""What gunicorn's worker builds after the fork: the model's session, the scorer, its gRPC
server, the IoT Edge publisher, model updates and the Flask app.

Everything heavy (ONNX, ONNX Runtime, numpy, Flask, gRPC, the Azure SDK) is imported from
here, never by the master (`__main__`), which only checks, forks and supervises.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunicorn.arbiter import Arbiter

from . import cache, engine_cache, heap, relay_status
from .addresses import AddressRules
from .archive import ArchiveLimits
from .auth import ApiKeys
from .core import Scorer, ScorerConfig
from .errors import one_line
from .fetch import FetchPolicy
from .http import create_app, scoring_routes
from .imaging import DecodeLimits
from .input_sizes import input_sizes, tensorrt_profile
from .model import ModelKind, ModelOptions, ModelSpec, inspect_export
from .model_download import DownloadLimits
from .model_store import ModelStore
from .settings import Settings, run_by_iot_edge
from .tls import TlsSource
from .vocabulary import NmsScope, YoloResize
from .watchdog import Watchdog

if TYPE_CHECKING:  # onnxruntime is imported only after the fork; see session.py
    from flask import Flask

    from .session import LoadedModel

log = logging.getLogger("scorer")


def yolo_resize(setting: YoloResize | None, tensorrt: bool) -> YoloResize:
    """`auto`: a YOLO export sized as its own script sizes it, except on TensorRT, whose
    engine is built for the input shapes it has seen: there each new camera shape would
    build another engine (minutes on a Jetson, longer than the inference time limit), so the
    export is stretched to the one size it declares."""
    if setting is None:
        return YoloResize.STRETCH if tensorrt else YoloResize.EXPORT
    return setting


def model_options(settings: Settings, tensorrt: bool = False) -> ModelOptions:
    """The per-model choices the settings make (`tensorrt`: the sessions run on it)."""
    return ModelOptions(
        pixel_format=settings.pixel_format,
        pixel_range=settings.pixel_range,
        yolo_sigmoid_xy=settings.yolo_sigmoid_xy,
        yolo_nms_per_class=settings.yolo_nms is NmsScope.PER_CLASS,
        yolo_max_detections=settings.yolo_max_detections,
        yolo_prob_threshold=settings.yolo_prob_threshold,
        yolo_resize=yolo_resize(settings.yolo_resize, tensorrt),
        yolo_max_aspect=settings.yolo_max_aspect if tensorrt else None,
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
            settings.max_image_pixels,
            settings.jpeg_draft,
            settings.max_decode_bytes,
            settings.max_image_aspect,
        ),
        max_body_bytes=settings.max_body_bytes,
        default_threshold=settings.default_threshold,
        default_max_predictions=settings.default_max_predictions,
        max_inflight=settings.max_inflight,
        decode_budget_bytes=settings.decode_budget_bytes,
    )


def provider_options(
    settings: Settings, spec: ModelSpec, onnxruntime_version: str, chosen: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The options of the chosen GPU providers for one model: CUDA's kernel search and arena;
    TensorRT's engine cache in a folder keyed by model, runtime and GPU, and its shape profile
    when the input takes several sizes."""
    from . import providers

    options: dict[str, dict[str, Any]] = {}
    if providers.CUDA in chosen:
        options[providers.CUDA] = providers.cuda_options(
            settings.cudnn_conv_algo_search,
            settings.gpu_mem_limit_mb * 1024 * 1024,
        )
    if providers.TENSORRT in chosen:
        options[providers.TENSORRT] = tensorrt_options(settings, spec, onnxruntime_version)
    return options


def tensorrt_options(
    settings: Settings, spec: ModelSpec, onnxruntime_version: str
) -> dict[str, Any]:
    """TensorRT's options for one model; its engine folder is made here (on a GPU machine)."""
    from . import providers

    sizes = input_sizes(spec.preprocessing, settings.yolo_max_aspect)
    profile = (
        tensorrt_profile(spec.input_name, sizes, spec.preprocessing.target_size)
        if len(sizes) > 1
        else None
    )
    folder: Path | None = None
    if providers.gpu_device_nodes():  # no GPU: nothing to cache
        root = cache.cache_root(spec.directory, settings.cache_dir)
        key = engine_cache.runtime_key(
            spec.sha256, onnxruntime_version, settings.trt_fp16, spec.input_shape, profile
        )
        try:
            folder = engine_cache.engine_folder(root, key)
        except OSError as error:
            # Without a cache TensorRT still runs; it rebuilds its engine at every start.
            log.warning("TensorRT engine cache not writable (%s): engines are not kept", error)
    return providers.tensorrt_options(settings.trt_fp16, folder, profile)


def forget_unused_derivations(
    settings: Settings, spec: ModelSpec, in_use: list[tuple[Path, Path | None]]
) -> None:
    """Mark the graphs and engines of the models in use (the one just opened, the one served,
    any other still held) as used, and remove those of models not used lately: as many kept
    of each kind as versions in the store and one more (the image's own model), and never
    one that a model in use needs."""
    root = cache.cache_root(spec.directory, settings.cache_dir)
    for paths in in_use:
        cache.mark_used(root, *paths)
    removed = cache.prune(root, max(settings.model_keep + 1, len(in_use)))
    if removed:
        log.info(
            "cache: removed %d graphs or engines of models not used lately (%s)",
            len(removed),
            ", ".join(path.name for path in removed),
        )


class EngineBuildProgress:
    """Logs while a first TensorRT engine build runs (minutes on a Jetson) before ready."""

    def __init__(self, folder: Path | None, interval_s: float = 30.0) -> None:
        self.folder = folder
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


def session_opener(settings: Settings, chosen: list[str]) -> Callable[[ModelSpec], LoadedModel]:
    """Opens a session for any model on the providers chosen at start, each with its options
    for that model (TensorRT's engine cache folder follows the model's hash)."""
    import onnxruntime

    from . import providers, session

    level = logging.getLevelName(settings.log_level)
    threads = session.Threading(settings.ort_intra_threads, settings.ort_spinning)
    preparation = session.Preparation(
        settings.io_binding, settings.warm_every_size, settings.yolo_max_aspect
    )

    # What each model still alive (served, in flight, being checked) derived in the cache.
    derived: weakref.WeakKeyDictionary[LoadedModel, tuple[Path, Path | None]] = (
        weakref.WeakKeyDictionary()
    )

    def open_model(spec: ModelSpec) -> LoadedModel:
        options = provider_options(settings, spec, onnxruntime.__version__, chosen)
        folder = options.get(providers.TENSORRT, {}).get("trt_engine_cache_path")
        engines = Path(folder) if folder else None
        with EngineBuildProgress(engines):
            model = engine_cache.opened_past_a_broken_engine(
                lambda: session.open_session(
                    spec, providers.with_options(chosen, options), level, threads, preparation
                ),
                engines,
            )
        derived[model] = (spec.onnx_path, engines)
        forget_unused_derivations(settings, spec, list(derived.values()))
        return model

    return open_model


@dataclasses.dataclass
class Sessions:
    """How the worker opens sessions, once the first model has chosen the providers."""

    open_model: Callable[[ModelSpec], LoadedModel] | None = None
    tensorrt: bool = False


def load_model(scorer: Scorer, settings: Settings, sessions: Sessions) -> None:
    """Pick providers, open the session and warm up; a failure ends the worker, and gunicorn.
    How sessions are opened goes into `sessions`, for model updates."""
    # Imported here, in the worker after the fork, never in the master: see session.py.
    from . import providers

    try:
        chosen, fallbacks = providers.resolve(settings.providers)
        scorer.provider_fallbacks = tuple(f.to_dict() for f in fallbacks)
        uses_tensorrt = providers.TENSORRT in chosen
        options = model_options(settings, uses_tensorrt)
        yolo = scorer.spec.kind is ModelKind.DETECTION_YOLO
        if yolo and options != model_options(settings):
            scorer.spec = inspect_export(scorer.spec.directory, options, settings.cache_dir)
            if settings.yolo_resize is None and options.yolo_resize is YoloResize.STRETCH:
                log.info(
                    "on TensorRT a YOLO export takes its declared input size (one engine shape);"
                    " SCORER_YOLO_RESIZE=export sizes it as its script does"
                )
        open_model = session_opener(settings, chosen)
        sessions.open_model, sessions.tensorrt = open_model, uses_tensorrt
        scorer.load(open_model)
    except Exception as error:
        log.critical("cannot start: %s", one_line(error))
        log.debug("why the model could not be loaded", exc_info=True)
        os._exit(Arbiter.WORKER_BOOT_ERROR)


def model_updater(scorer: Scorer, settings: Settings, sessions: Sessions) -> Any:
    """Installs and swaps in new model versions (twin `model`, or the admin route)."""
    from .model_update import ModelUpdater

    def open_model(spec: ModelSpec) -> LoadedModel:
        if sessions.open_model is None:
            raise RuntimeError("the first model is still loading")
        return sessions.open_model(spec)

    def inspect(folder: Path) -> ModelSpec:
        return inspect_export(
            folder, model_options(settings, sessions.tensorrt), settings.cache_dir
        )

    return ModelUpdater(
        scorer,
        ModelStore.for_settings(settings),
        inspect=inspect,
        open_model=open_model,
        limits=DownloadLimits(
            settings.model_max_bytes,
            settings.model_download_timeout_s,
            settings.model_allow_http,
            rules=AddressRules.parse(settings.model_allowed_addresses, private=True),
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
    from .rpc import GrpcLimits, create_server

    try:
        server, port = create_server(
            scorer,
            f"{settings.host}:{settings.grpc_port}",
            GrpcLimits(
                settings.grpc_max_calls, settings.max_connections, settings.idle_connection_s
            ),
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
    if not settings.edge.applies(run_by_iot_edge()):
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


def edge_status(publisher: Any, settings: Settings) -> Callable[[], dict[str, Any]]:
    """What the page shows of IoT Edge: the publisher's state and the relay's, if reachable
    (None for what does not run here)."""

    def status() -> dict[str, Any]:
        url = settings.relay_metrics_url
        return {
            "publisher": publisher.publisher_state() if publisher is not None else None,
            "relay": relay_status.fetch(url) if url and publisher is not None else None,
        }

    return status


@dataclasses.dataclass
class Serving:
    """What the worker runs: the app for gunicorn's threads and the parts beside it."""

    app: Flask
    scorer: Scorer
    grpc_server: Any
    edge_publisher: Any
    scores: Callable[[str, str], bool]  # (method, path) goes to a route that scores


def serve(settings: Settings, folder: Path, version: str | None, tls: TlsSource | None) -> Serving:
    """Build the scorer and load its model in the background; start gRPC, IoT Edge and the
    watchdog; return the Flask app. An export that cannot be read ends the worker."""
    heap.keep_request_memory()
    try:
        spec = inspect_export(folder, model_options(settings), settings.cache_dir)
    except Exception as error:  # noqa: BLE001 - any failure to read it ends the worker
        log.critical("cannot start: %s", one_line(error))
        os._exit(Arbiter.WORKER_BOOT_ERROR)
    scorer = Scorer(spec, scorer_config(settings, spec, version))
    sessions = Sessions()
    threading.Thread(
        target=load_model, args=(scorer, settings, sessions), name="model-loader", daemon=True
    ).start()
    updater = model_updater(scorer, settings, sessions)
    Watchdog(scorer, settings.inference_timeout_s, end_the_process).start()
    grpc_server = start_grpc(scorer, settings, tls)
    if tls is not None:
        tls.keep_renewing()  # in the worker: its HTTP context and gRPC follow
    edge_publisher = start_edge(scorer, settings, updater)
    policy = None
    if settings.url_enabled:
        policy = FetchPolicy(
            settings.url_allowed_hosts, settings.max_body_bytes, settings.url_timeout_s
        )
    app = create_app(
        scorer, policy, ApiKeys(settings.api_keys), updater, edge_status(edge_publisher, settings)
    )
    return Serving(app, scorer, grpc_server, edge_publisher, scoring_routes(app))
