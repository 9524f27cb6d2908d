#!/usr/bin/env python3
"""Get the ONNX Runtime GPU wheel for the base image and prove it is the wheel we expect.

    fetch_wheel.py --sha256 HEX (--file PATH | --url URL) --dest DIR

Refuses, with one clear line: a SHA-256 that differs, a download that is an HTML page (a
login or error page served with 200), anything that is not a wheel, and a wheel that is not
onnxruntime-gpu. Standard library only: it runs inside the bare L4T image.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

EXPECTED_PROJECT = "onnxruntime_gpu"


class WheelError(Exception):
    """The file is not the wheel asked for."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_wheel(path: Path, expected_sha256: str) -> str:
    """The wheel's project name and version, or `WheelError` saying what is wrong."""
    head = path.read_bytes()[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise WheelError(f"{path.name} is an HTML page, not a wheel: check ORT_WHEEL_URL")
    if not zipfile.is_zipfile(path):
        raise WheelError(f"{path.name} is not a wheel (not a zip archive)")
    actual = sha256_of(path)
    if actual != expected_sha256.lower():
        raise WheelError(
            f"{path.name}: SHA-256 {actual} differs from ORT_WHEEL_SHA256 {expected_sha256}"
        )
    with zipfile.ZipFile(path) as wheel:
        metadata = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        if not metadata:
            raise WheelError(f"{path.name} has no .dist-info/METADATA: not a wheel")
        fields = dict(
            line.split(": ", 1)
            for line in wheel.read(metadata[0]).decode("utf-8", "replace").splitlines()
            if ": " in line
        )
    name = fields.get("Name", "").replace("-", "_").lower()
    if name != EXPECTED_PROJECT:
        raise WheelError(
            f"{path.name} is {fields.get('Name')!r}, not onnxruntime-gpu (the CPU "
            "package beside the GPU one would hide CUDA)"
        )
    return f"{fields['Name']} {fields.get('Version', '?')}"


def fetch(url: str, dest: Path) -> Path:
    name = url.rsplit("/", 1)[-1].split("?", 1)[0] or "onnxruntime_gpu.whl"
    target = dest / name
    with urllib.request.urlopen(url, timeout=120) as response, target.open("wb") as out:
        shutil.copyfileobj(response, out)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sha256", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path)
    source.add_argument("--url")
    parser.add_argument("--dest", type=Path, default=Path("/tmp/wheels"))
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    try:
        path = args.file if args.file else fetch(args.url, args.dest)
        print(f"fetch_wheel: {check_wheel(path, args.sha256)} OK ({path})")
    except (WheelError, OSError) as error:
        print(f"fetch_wheel: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
