"""The one reader of `.env` for every script, reading it the way iotedgedev does.

iotedgedev loads `.env` with python-dotenv's `load_dotenv` (the environment wins; inline
`# comments`, quotes and `${VAR}` references as python-dotenv defines them). These functions
give the same values without changing this process's environment, and write a key back the
same way. Kept free of newer syntax: it also runs on a JetPack 5 host's Python 3.8.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    from dotenv import set_key
    from dotenv.main import DotEnv
except ImportError:  # a bare Jetson host: say how to get it, not a traceback
    sys.exit(
        "python-dotenv is missing: `sudo apt-get install -y python3-dotenv` (Jetson host) or "
        "`scripts/setup --dev`"
    )


def load(path: Path) -> dict[str, str]:
    """The environment over the file's values, as `iotedgedev` would see them."""
    values: dict[str, str] = {}
    if path.exists():
        parsed = DotEnv(path, override=False, interpolate=True).dict()
        values = {key: value for key, value in parsed.items() if value is not None}
    values.update(os.environ)
    return values


def value(path: Path, name: str) -> str:
    """One setting, from the environment or the file; empty when neither has it."""
    return load(path).get(name, "")


def write(path: Path, name: str, text: str) -> None:
    """Set `name` in the file, keeping every other line and comment as it is."""
    path.touch(exist_ok=True)
    set_key(str(path), name, text, quote_mode="never")
