"""Scorer settings: one frozen dataclass read from `SCORER_*` variables, validated at start."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .vocabulary import (
    AUTO,
    CertificateSource,
    CudnnSearch,
    NmsScope,
    PixelFormat,
    PixelRange,
    Switch,
    VocabularyT,
    YoloResize,
)

PREFIX = "SCORER_"
PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


# What IoT Edge sets for every module it starts (and what the SDK's
# create_from_edge_environment reads).
EDGE_VARIABLES = (
    "IOTEDGE_WORKLOADURI",
    "IOTEDGE_DEVICEID",
    "IOTEDGE_MODULEID",
    "IOTEDGE_GATEWAYHOSTNAME",
    "IOTEDGE_IOTHUBHOSTNAME",
    "IOTEDGE_MODULEGENERATIONID",
    "IOTEDGE_APIVERSION",
)


def run_by_iot_edge(environ: Mapping[str, str] | None = None) -> bool:
    """True when IoT Edge started this process (its module environment is complete).

    Checked here, not in edge.py, so that outside IoT Edge the Azure SDK is never imported.
    """
    environ = os.environ if environ is None else environ
    return all(environ.get(name) for name in EDGE_VARIABLES)


class SettingsError(ValueError):
    """A setting has a value the scorer cannot start with; the message names the variable."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("expected a whole number above 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("expected a port number from 0 to 65535")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a number from 0 to 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("expected a number above 0")
    return value


def _aspect(text: str) -> float:
    value = float(text)
    if not 1.0 <= value <= 16.0:
        raise ValueError("expected a width:height ratio from 1 to 16")
    return value


def _image_aspect(text: str) -> float:
    value = float(text)
    if not 1.0 <= value <= 1000.0:
        raise ValueError("expected a width:height ratio from 1 to 1000")
    return value


def _providers(text: str) -> tuple[str, ...]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if names == [AUTO]:
        return (AUTO,)
    unknown = [name for name in names if name not in PROVIDER_NAMES]
    if not names or unknown:
        raise ValueError(f"expected '{AUTO}' or a list of {', '.join(PROVIDER_NAMES)}")
    return tuple(PROVIDER_NAMES[name] for name in names)


def _word(vocabulary: type[VocabularyT], text: str, also: tuple[str, ...] = ()) -> VocabularyT:
    try:
        return vocabulary(text)
    except ValueError:
        words = [*also, *(word.value for word in vocabulary)]
        raise ValueError(f"expected one of {', '.join(words)}") from None


def _choice(vocabulary: type[VocabularyT]) -> Callable[[str], VocabularyT]:
    return lambda text: _word(vocabulary, text)


def _override(vocabulary: type[VocabularyT]) -> Callable[[str], VocabularyT | None]:
    """A choice that may also be `auto`: None, which leaves it to the export."""
    return lambda text: None if text == AUTO else _word(vocabulary, text, (AUTO,))


def _hosts(text: str) -> tuple[str, ...]:
    return tuple(host.strip().lower() for host in text.split(",") if host.strip())


def _networks(text: str) -> tuple[str, ...]:
    entries = tuple(entry.strip() for entry in text.split(",") if entry.strip())
    for entry in entries:
        ipaddress.ip_network(entry, strict=False)  # ValueError names the bad one
    return entries


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def _setting(default: Any, parse: Callable[[str], Any], doc: str, secret: bool = False) -> Any:
    return dataclasses.field(
        default=default, repr=not secret, metadata={"parse": parse, "doc": doc}
    )


def _keys(text: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    if any(len(key) < 16 for key in keys):
        raise ValueError("each key needs at least 16 characters")
    return keys


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the scorer; `from_env` is the only way production builds one."""

    model_dir: Path = _setting(
        Path("/models/current"), Path, "folder with model.onnx and labels.txt"
    )
    model_name: str = _setting("", str, "name reported in results (default: the folder's name)")
    model_version: str = _setting("", str, "version reported (default: first 12 hex of SHA-256)")
    cache_dir: Path | None = _setting(
        None,
        Path,
        "writable cache: TensorRT engines, upgraded legacy models (default: .cache by the model)",
    )
    model_store: Path | None = _setting(
        None, Path, "model versions installed by updates (default: models/ in the cache)"
    )
    model_keep: int = _setting(2, _positive_int, "versions kept in the store (current, previous)")
    model_max_bytes: int = _setting(
        1 << 30, _positive_int, "largest model download, and the most an export may unpack to"
    )
    model_download_timeout_s: float = _setting(
        900.0, _positive_float, "time limit for a whole model download"
    )
    model_allow_http: bool = _setting(False, _bool, "allow http:// model URLs (labs, tests)")
    model_allowed_addresses: tuple[str, ...] = _setting(
        (),
        _networks,
        "internal addresses or networks model downloads may reach (e.g. an on-premises model"
        " server 10.0.0.5); loopback, link-local and private ones are refused otherwise",
    )
    host: str = _setting("0.0.0.0", str, "address both servers listen on")
    http_port: int = _setting(8080, _port, "HTTP port (0: any free port)")
    grpc_port: int = _setting(50051, _port, "gRPC port (0: any free port)")
    threads: int = _setting(
        24, _positive_int, "HTTP threads; more than max_inflight, so health and 429s never wait"
    )
    grpc_max_calls: int = _setting(
        64,
        _positive_int,
        "concurrent gRPC calls, streams included (no thread each; up to SCORER_MAX_BODY_BYTES"
        " of memory each while a message arrives)",
    )
    max_connections: int = _setting(
        1000,
        _positive_int,
        "client connections each server keeps open (HTTP, gRPC); at the limit HTTP closes the"
        " longest-idle one to admit a new one (or waits to accept), gRPC closes new ones",
    )
    max_client_connections: int = _setting(
        0,
        _non_negative_int,
        "HTTP connections one client address may hold (0: half of SCORER_MAX_CONNECTIONS); a"
        " new one beyond it takes the place of that address's longest-idle one, or is refused",
    )
    idle_connection_s: int = _setting(
        75,
        _positive_int,
        "a connection with nothing in flight is closed after this (HTTP keep-alive; gRPC, no call)",
    )
    max_inflight: int = _setting(16, _positive_int, "requests scored at once before 429")
    max_body_bytes: int = _setting(8 * 1024 * 1024, _positive_int, "largest request body")
    client_timeout_s: float = _setting(
        10.0, _positive_float, "a request's headers and body must arrive within this (else 408)"
    )
    read_budget_bytes: int = _setting(
        128 * 1024 * 1024,
        _positive_int,
        "request bytes held at once by requests still arriving; beyond it 429",
    )
    send_budget_bytes: int = _setting(
        64 * 1024 * 1024,
        _positive_int,
        "answer bytes waiting for clients that do not read them; beyond it such a connection"
        " is closed",
    )
    max_image_pixels: int = _setting(
        40_000_000, _positive_int, "largest image, decoded and as sized for the model"
    )
    max_image_aspect: float = _setting(
        16.0,
        _image_aspect,
        "most elongated image accepted, width:height or height:width (beyond 16:1 the"
        " script in YOLO exports fails)",
    )
    jpeg_draft: bool = _setting(True, _bool, "decode large JPEGs at reduced scale")
    max_decode_bytes: int = _setting(
        400_000_000, _positive_int, "memory one image's decode may take (pixels x bytes x copies)"
    )
    decode_budget_bytes: int = _setting(
        1_000_000_000, _positive_int, "memory all decodes at once may take; beyond it they wait"
    )
    providers: tuple[str, ...] = _setting((AUTO,), _providers, "auto or e.g. cuda,cpu")
    trt_fp16: bool = _setting(True, _bool, "let TensorRT build FP16 engines")
    cudnn_conv_algo_search: CudnnSearch = _setting(
        CudnnSearch.EXHAUSTIVE,
        _choice(CudnnSearch),
        "how CUDA picks convolution kernels: EXHAUSTIVE (fastest runs, slower start),"
        " HEURISTIC, DEFAULT (least memory)",
    )
    gpu_mem_limit_mb: int = _setting(
        0, _non_negative_int, "most memory the CUDA provider's arena may take (0: no limit)"
    )
    io_binding: Switch = _setting(
        Switch.OFF,
        _choice(Switch),
        "bind fixed-size inputs to buffers kept on the device, one per run at once (auto: on"
        " GPU; off by default: it measured no faster on CUDA, docs/BENCHMARKS.md)",
    )
    warm_every_size: Switch = _setting(
        Switch.AUTO,
        _choice(Switch),
        "run every input size a YOLO export will see before ready (auto: on GPU providers)",
    )
    yolo_max_aspect: float = _setting(
        2.5,
        _aspect,
        "sizes warmed up for YOLO images up to this width:height (or height:width); on"
        " TensorRT, wider images are sized as if this wide",
    )
    ort_intra_threads: int = _setting(
        0, _non_negative_int, "ONNX Runtime intra-op threads (0: one per core)"
    )
    ort_spinning: bool = _setting(
        False, _bool, "intra-op threads spin after a run (docs/BENCHMARKS.md: off is cheaper)"
    )
    default_threshold: float = _setting(0.0, _probability, "minimum probability returned")
    default_max_predictions: int = _setting(0, _non_negative_int, "0 means all")
    pixel_format: PixelFormat | None = _setting(
        None, _override(PixelFormat), "override colour order (auto: the export's)"
    )
    pixel_range: PixelRange | None = _setting(
        None, _override(PixelRange), "override value range (auto: the export's)"
    )
    yolo_sigmoid_xy: bool = _setting(True, _bool, "sigmoid on tx, ty (YOLOv2)")
    yolo_nms: NmsScope = _setting(NmsScope.PER_CLASS, _choice(NmsScope), "NMS scope")
    yolo_max_detections: int = _setting(20, _positive_int, "boxes kept after NMS")
    yolo_prob_threshold: float = _setting(0.10, _probability, "probability kept before NMS")
    yolo_resize: YoloResize | None = _setting(
        None,
        _override(YoloResize),
        "YOLO input: export (metadata, else ~512x512 aspect kept), stretch (declared size);"
        " auto: export, but stretch on TensorRT",
    )
    api_keys: tuple[str, ...] = _setting(
        (), _keys, "comma-separated API keys (empty: no key needed); several for rotation", True
    )
    tls: CertificateSource = _setting(
        CertificateSource.AUTO,
        _choice(CertificateSource),
        "edge: a certificate from IoT Edge (auto: the files)",
    )
    tls_common_name: str = _setting("", str, "name in the IoT Edge certificate (default: host)")
    tls_cert_file: Path | None = _setting(None, Path, "PEM certificate (chain): TLS on both ports")
    tls_key_file: Path | None = _setting(None, Path, "PEM private key of that certificate")
    tls_client_ca_file: Path | None = _setting(
        None, Path, "PEM CA: clients must present a certificate it signed"
    )
    url_enabled: bool = _setting(False, _bool, "serve POST /url (the device fetches a URL)")
    url_allowed_hosts: tuple[str, ...] = _setting(
        (), _hosts, "host or host:port pairs /url may fetch from (a bare host: default port only)"
    )
    url_timeout_s: float = _setting(5.0, _positive_float, "time limit for a /url fetch")
    graceful_timeout_s: float = _setting(20.0, _positive_float, "grace on SIGTERM")
    inference_timeout_s: float = _setting(
        60.0, _positive_float, "an inference running longer stops the scorer (IoT Edge restarts it)"
    )
    edge: Switch = _setting(
        Switch.AUTO, _choice(Switch), "publish to IoT Edge (auto: if run by it)"
    )
    edge_output: str = _setting("results", str, "edgeHub output the results go to")
    edge_queue_size: int = _setting(1000, _positive_int, "results waiting for edgeHub before drops")
    edge_call_timeout_s: float = _setting(10.0, _positive_float, "time limit of one SDK call")
    edge_recreate_after_s: float = _setting(60.0, _positive_float, "broken link: new client after")
    edge_report_interval_s: float = _setting(30.0, _positive_float, "reported properties period")
    relay_metrics_url: str = _setting(
        "",
        str,
        "the relay's /metrics, shown on the page (under IoT Edge: http://relay:9601/metrics)",
    )
    heartbeat_path: Path = _setting(
        Path("/tmp/scorer-heartbeat"),
        Path,
        "file the worker writes every second with its state (the image's HEALTHCHECK reads it)",
    )
    log_level: str = _setting("INFO", _log_level, "DEBUG, INFO, WARNING or ERROR")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `SCORER_*` variables; raise `SettingsError` naming the first bad or unknown one."""
        environ = os.environ if environ is None else environ
        known = {PREFIX + field.name.upper(): field for field in dataclasses.fields(cls)}
        unknown = sorted(key for key in environ if key.startswith(PREFIX) and key not in known)
        if unknown:
            raise SettingsError(f"{unknown[0]} is not a scorer setting (see .env.example)")
        values: dict[str, Any] = {}
        for name, field in known.items():
            if not environ.get(name):  # unset or empty (KEY= in an env file): the default
                continue
            try:
                values[field.name] = field.metadata["parse"](environ[name])
            except ValueError as error:
                shown = "<hidden>" if not field.repr else repr(environ[name])
                raise SettingsError(f"{name}={shown}: {error}") from None
        settings = cls(**values)
        if settings.threads <= settings.max_inflight:
            raise SettingsError(
                f"SCORER_THREADS={settings.threads} must be more than SCORER_MAX_INFLIGHT="
                f"{settings.max_inflight}: the threads beyond it answer health checks, metrics "
                "and 429 at once while every slot is scoring"
            )
        if settings.read_budget_bytes < settings.max_body_bytes:
            raise SettingsError("SCORER_READ_BUDGET_BYTES must be at least SCORER_MAX_BODY_BYTES")
        if settings.decode_budget_bytes < settings.max_decode_bytes:
            raise SettingsError(
                "SCORER_DECODE_BUDGET_BYTES must be at least SCORER_MAX_DECODE_BYTES"
            )
        if settings.tls is CertificateSource.EDGE and not run_by_iot_edge(environ):
            raise SettingsError("SCORER_TLS=edge needs the module environment IoT Edge gives")
        if settings.tls is CertificateSource.EDGE and settings.tls_cert_file:
            raise SettingsError("SCORER_TLS=edge and SCORER_TLS_CERT_FILE exclude each other")
        if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
            raise SettingsError("SCORER_TLS_CERT_FILE and SCORER_TLS_KEY_FILE go together")
        if settings.tls_client_ca_file and not settings.tls_cert_file:
            raise SettingsError("SCORER_TLS_CLIENT_CA_FILE needs SCORER_TLS_CERT_FILE")
        for name, path in (
            ("SCORER_TLS_CERT_FILE", settings.tls_cert_file),
            ("SCORER_TLS_KEY_FILE", settings.tls_key_file),
            ("SCORER_TLS_CLIENT_CA_FILE", settings.tls_client_ca_file),
        ):
            if path is not None and not os.access(path, os.R_OK):
                raise SettingsError(f"{name}={str(path)!r}: not a readable file")
        if settings.url_enabled and not settings.url_allowed_hosts:
            raise SettingsError("SCORER_URL_ENABLED=true needs SCORER_URL_ALLOWED_HOSTS")
        return settings

    @classmethod
    def documented(cls) -> list[tuple[str, Any, str]]:
        """(variable, default, description) for every setting, for `.env.example` checks."""
        return [
            (PREFIX + field.name.upper(), field.default, field.metadata["doc"])
            for field in dataclasses.fields(cls)
        ]
