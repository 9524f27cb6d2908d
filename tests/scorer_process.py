"""Run `python -m scorer` as production does, on 127.0.0.1 and a free port; tests and
benchmarks share it. Standard library and requests only."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]

LISTENING = re.compile(r"HTTP listening on http://127\.0\.0\.1:(\d+)")
GRPC_LISTENING = re.compile(r"gRPC listening on 127\.0\.0\.1:(\d+)")


class ScorerProcess:
    """A running `python -m scorer` with its log, address and exit status."""

    def __init__(
        self,
        env: dict[str, str],
        ca: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
        cwd: Path = REPO,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        """With `ca`, the scorer serves TLS signed by it (and wants `client_cert` if given);
        `cwd` is the tree it runs from (another revision's, to compare); `nofile`, the
        (soft, hard) file descriptor limits it starts with, as `docker --ulimit` sets them."""
        self.ca = ca
        self.tls_options: dict = {}
        if ca is not None:
            self.tls_options["verify"] = str(ca)
        if client_cert is not None:
            self.tls_options["cert"] = tuple(str(p) for p in client_cert)
        self.lines: list[str] = []
        self.port: int | None = None
        self.grpc_port: int | None = None
        self._grpc_listening = threading.Event()
        self._listening = threading.Event()
        if not env.get("SCORER_HEARTBEAT_PATH"):  # one each: tests run scorers side by side
            folder = tempfile.mkdtemp(prefix="scorer-heartbeat-")
            env = {**env, "SCORER_HEARTBEAT_PATH": os.path.join(folder, "heartbeat")}
        self.env = env
        command = [sys.executable, "-m", "scorer"]
        if nofile is not None:
            command = [
                sys.executable,
                "-c",
                "import resource, runpy, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, {nofile}); "
                "sys.argv = ['scorer']; runpy.run_module('scorer', run_name='__main__')",
            ]
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                self._listening.set()
            match = GRPC_LISTENING.search(line)
            if match:
                self.grpc_port = int(match.group(1))
                self._grpc_listening.set()
        self._listening.set()
        self._grpc_listening.set()

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, timeout: float = 30) -> None:
        """Both front ends accept connections (the model may still be loading)."""
        deadline = time.monotonic() + timeout
        for event in (self._listening, self._grpc_listening):
            event.wait(max(0.0, deadline - time.monotonic()))
        if self.port is None or self.grpc_port is None:
            raise AssertionError(f"scorer did not start listening:\n{self.log}")

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_listening()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"scorer exited with {self.proc.returncode}:\n{self.log}")
            try:
                ready = requests.get(self.url + "/readyz", timeout=2, **self.tls_options)
                if ready.status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"scorer never became ready:\n{self.log}")

    def health_check(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, run beside this scorer as Docker runs it (with
        the port it serves on in its environment, as the image has)."""
        return subprocess.run(
            [sys.executable, "-m", "scorer.healthcheck"],
            env={**self.env, "SCORER_HTTP_PORT": str(self.port)},
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def scorer_env(model_dir: Path, cache_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a scorer on a free port, as the README starts it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update(
        # Prepended, not replaced: a GPU machine may bring onnxruntime-gpu on PYTHONPATH.
        PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO / "modules" / "scorer"), os.environ.get("PYTHONPATH")) if p
        ),
        SCORER_MODEL_DIR=str(model_dir),
        SCORER_CACHE_DIR=str(cache_dir),
        SCORER_HOST="127.0.0.1",
        SCORER_HTTP_PORT="0",
        SCORER_GRPC_PORT="0",
    )
    env.update({f"SCORER_{k.upper()}": v for k, v in settings.items()})
    return env


def worker_pid(master: int) -> int:
    """The gunicorn worker of a scorer's master process (the one that holds the model)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0])


def memory_mb(pid: int, field: str) -> float:
    """A memory figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _stat_fields(pid: int) -> list[str]:
    """The fields of `/proc/<pid>/stat` after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def minor_faults(pid: int) -> int:
    """Page faults a process had served without I/O so far (`minflt`)."""
    return int(_stat_fields(pid)[7])


def free_port() -> int:
    """A TCP port nothing listens on now (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
