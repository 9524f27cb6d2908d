"""Just enough of a Dockerfile parser to replay an image's steps without Docker."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path


@dataclasses.dataclass
class Stage:
    """One build stage: its base and the instructions that matter for a replay."""

    base: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    requirements: list[str] = dataclasses.field(default_factory=list)
    cmd: list[str] = dataclasses.field(default_factory=list)
    healthcheck: list[str] = dataclasses.field(default_factory=list)
    user: str = ""
    expose: list[str] = dataclasses.field(default_factory=list)
    runs: list[str] = dataclasses.field(default_factory=list)
    # (source in the build context, destination) of each COPY from the context, and the
    # WORKDIR the destination is relative to
    copies: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    workdir: str = "/"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    return [
        (item.split(None, 1)[0].upper(), item.split(None, 1)[1] if " " in item else "")
        for item in logical
    ]


def _env(arguments: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(arguments))


def stages(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, last one being the image that runs."""
    found: list[Stage] = []
    for instruction, arguments in instructions(path):
        if instruction == "FROM":
            found.append(Stage(arguments.split()[0]))
        elif not found:
            continue
        elif instruction == "ENV":
            found[-1].env.update(_env(arguments))
        elif instruction == "RUN":
            found[-1].runs.append(arguments)
            found[-1].requirements += re.findall(r"-r\s+(\S+)", arguments)
        elif instruction == "CMD":
            found[-1].cmd = json.loads(arguments)
        elif instruction == "HEALTHCHECK":
            found[-1].healthcheck = json.loads(arguments.split("CMD", 1)[1])
        elif instruction == "USER":
            found[-1].user = arguments
        elif instruction == "EXPOSE":
            found[-1].expose += arguments.split()
        elif instruction == "WORKDIR":
            found[-1].workdir = arguments
        elif instruction == "COPY" and not arguments.startswith("--from"):
            *sources, destination = arguments.split()
            found[-1].copies += [(src, destination, found[-1].workdir) for src in sources]
    return found


def context_of(dockerfile: Path) -> Path:
    """The build context module.json names for the module the Dockerfile belongs to."""
    manifest = json.loads((dockerfile.parent / "module.json").read_text())
    return (dockerfile.parent / manifest["image"].get("contextPath", "./")).resolve()
