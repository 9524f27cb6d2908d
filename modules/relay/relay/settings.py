"""Relay settings: `RELAY_*` variables, typed by the fields below, validated at start."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path

from .spool import MIN_SPOOL_BYTES

PREFIX = "RELAY_"


class SettingsError(ValueError):
    """A setting the relay cannot start with; the message names the variable."""


def _parse(kind: type, text: str) -> object:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    value = kind(text)
    if kind in (int, float) and value <= 0:  # every number here is a size, count or duration
        raise ValueError("expected a number above 0")
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the relay. The policy itself comes from the module twin, not from here."""

    spool_path: Path = Path("/spool/relay.db")  # on the module's volume
    spool_max_bytes: int = 256 * 1024 * 1024
    input_name: str = "results"
    output_name: str = "upstream"
    send_timeout_s: float = 15.0
    call_timeout_s: float = 10.0
    recreate_after_s: float = 60.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    report_interval_s: float = 30.0
    graceful_timeout_s: float = 10.0
    heartbeat_path: Path = Path("/tmp/relay-heartbeat")  # written every second; HEALTHCHECK
    stall_after_s: float = 600.0  # unhealthy when nothing was delivered for this long
    metrics_port: int = 9601  # GET /metrics for the metrics collector (module network only)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `RELAY_*`; raise `SettingsError` naming the first bad or unknown variable."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        fields = {PREFIX + f.name.upper(): f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in environ if k.startswith(PREFIX) and k not in fields)
        if unknown:
            raise SettingsError(f"{unknown[0]} is not a relay setting (see .env.example)")
        values: dict[str, typing.Any] = {}
        for variable, name in fields.items():
            if environ.get(variable):
                try:
                    values[name] = _parse(hints[name], environ[variable])
                except ValueError as error:
                    raise SettingsError(f"{variable}={environ[variable]!r}: {error}") from None
        settings = cls(**values)
        if settings.spool_max_bytes < MIN_SPOOL_BYTES:
            raise SettingsError(f"RELAY_SPOOL_MAX_BYTES: at least {MIN_SPOOL_BYTES} (8 MiB)")
        if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError("RELAY_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR")
        return settings
