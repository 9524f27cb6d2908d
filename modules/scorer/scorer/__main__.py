"""`python -m scorer`: check settings and model, then serve HTTP and gRPC from one process.

The model is inspected (files only, in a forked child) before gunicorn starts, so a bad
export stops the start with one line. gunicorn's one worker then builds everything
(`worker_app.serve`): the ONNX Runtime session (once, after the fork) and the gRPC server
beside its HTTP threads, so both front ends share one `Scorer`, one session and one
in-flight budget. This process, the master, imports none of it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from . import descriptors
from .archive import export_folder
from .errors import one_line
from .model_store import ModelStore, StoreError
from .settings import Settings, SettingsError
from .tls import TlsSource
from .tls import from_settings as tls_from_settings
from .worker import ScorerWorker

if TYPE_CHECKING:
    from .core import Scorer

log = logging.getLogger("scorer")


def check_export(settings: Settings, folder: Path) -> int:
    """Read the export in a forked child, so that a bad one stops the start with one line
    before gunicorn starts, while this process never imports ONNX or numpy (they would stay
    in the master's memory for nothing). The exit status: 0 if it can be served."""
    child = os.fork()
    if child == 0:  # the child: inspect, say what it found, leave without cleanup
        status = 2
        try:
            from .model import inspect_export
            from .worker_app import model_options

            spec = inspect_export(folder, model_options(settings), settings.cache_dir)
            log.info("serving %s: %s", folder, spec.summary())
            status = 0
        except Exception as error:
            log.critical("cannot start: %s", one_line(error))
            log.debug("why the export could not be read", exc_info=True)
        finally:
            logging.shutdown()
            os._exit(status)
    _, wait_status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(wait_status)


class ScorerServer(BaseApplication):
    """gunicorn, configured from `Settings`, with one worker that owns the model."""

    def __init__(
        self, settings: Settings, folder: Path, tls: TlsSource | None, version: str | None
    ) -> None:
        self.settings = settings
        self.folder = folder
        self.version = version  # the store's promoted version, when it is the one served
        self.scorer: Scorer | None = None
        self.tls = tls  # the worker wraps HTTP connections with it
        self.grpc_server: Any = None
        self.edge_publisher: Any = None
        self.scores: Callable[[str, str], bool] = lambda _method, _path: False
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
            "keepalive": s.idle_connection_s,
            "worker_connections": s.max_connections,
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
        """Runs in the worker after the fork: everything heavy is imported from here on."""
        from .worker_app import serve

        serving = serve(self.settings, self.folder, self.version, self.tls)
        self.scorer = serving.scorer  # the worker counts what it refuses while reading requests
        self.grpc_server = serving.grpc_server
        self.edge_publisher = serving.edge_publisher
        self.scores = serving.scores  # which requests take an in-flight slot
        return serving.app


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
    store = ModelStore.for_settings(settings)
    try:
        store.recover()
    except OSError as error:  # a read-only or damaged volume: serving matters more
        log.warning("model store: cannot clean up: %s", one_line(error))
    try:
        promoted = store.current()
    except StoreError as error:
        log.error("model store unreadable, serving %s: %s", settings.model_dir, error)
        promoted = None
    if promoted is not None:  # a model update was promoted: a restart serves it again
        folder = export_folder(store.folder(promoted.version))
        version = promoted.version
    if check_export(settings, folder) != 0:
        return 2
    try:
        tls = tls_from_settings(settings, os.environ)
    except (OSError, ValueError, KeyError) as error:
        log.critical("cannot start: no TLS certificate: %s", one_line(error))
        return 2
    connections = descriptors.ensure_for(settings.max_connections)
    settings = dataclasses.replace(settings, max_connections=connections)
    ScorerServer(settings, folder, tls, version).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
