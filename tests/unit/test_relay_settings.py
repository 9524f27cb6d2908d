"""Relay settings: typed from the environment, one clear line on a bad value, all documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from relay.settings import Settings, SettingsError

from tests.conftest import REPO


def test_defaults_keep_the_spool_on_the_module_volume() -> None:
    settings = Settings.from_env({})
    assert settings.spool_path == Path("/spool/relay.db")
    assert (settings.input_name, settings.output_name) == ("results", "upstream")


def test_values_are_parsed_by_their_type() -> None:
    environ = {"RELAY_SPOOL_MAX_BYTES": "9000000", "RELAY_SEND_TIMEOUT_S": "2.5"}
    settings = Settings.from_env(environ)
    assert settings.spool_max_bytes == 9_000_000 and settings.send_timeout_s == 2.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_SPOOL_MAX_BYTES", "lots"),
        ("RELAY_SPOOL_MAX_BYTES", "1000"),  # below the write-ahead log's own room
        ("RELAY_SEND_TIMEOUT_S", "0"),
        ("RELAY_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_unknown_relay_variable_is_refused() -> None:
    with pytest.raises(SettingsError, match="RELAY_SPOOL is not a relay setting"):
        Settings.from_env({"RELAY_SPOOL": "/x"})


def test_env_example_documents_every_relay_setting() -> None:
    documented = set(
        re.findall(r"^#?\s*(RELAY_[A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M)
    )
    assert {f"RELAY_{f.name.upper()}" for f in dataclasses.fields(Settings)} <= documented
