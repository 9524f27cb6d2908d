#!/usr/bin/env python3
"""Get the ONNX Runtime GPU wheel for the base image, prove it is the one asked for, and save
it under its real name.

    fetch_wheel.py --sha256 HEX (--file PATH | --url URL) --dest DIR [--python-tag cp310]

Refuses, with one clear line: a SHA-256 that differs, a download that is an HTML page (a
login or error page served with 200), anything that is not a wheel, a wheel that is not
onnxruntime-gpu, and a wheel built for another Python than the image's. The file is written
to DIR as `<name>-<version>-<tag>.whl` from the wheel's own metadata, whatever the URL ends
in (Jetson AI Lab links carry `#sha256=...`, Jetson Zoo links are opaque box names), so pip
accepts it. Everything is streamed: a 300 MB wheel is never read into memory at once.
Standard library only, and Python 3.8 syntax: it runs on a JetPack 5 host and in the bare
L4T image.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

EXPECTED_PROJECT = "onnxruntime_gpu"
HTML_STARTS = (b"<!doctype html", b"<html", b"<?xml", b"<head")
DOWNLOAD_TIMEOUT_S = 120


class WheelError(Exception):
    """The file is not the wheel asked for."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fields(text: str) -> dict[str, str]:
    """`Key: value` lines of a METADATA or WHEEL file (the first value of each key)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key not in fields:
            fields[key] = value.strip()
    return fields


def check_wheel(path: Path, expected_sha256: str, python_tag: str = "") -> str:
    """The wheel's proper file name, or `WheelError` saying what is wrong with it."""
    with path.open("rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith(HTML_STARTS):
        raise WheelError(f"{path.name} is an HTML page, not a wheel: check the wheel URL")
    if not zipfile.is_zipfile(path):
        raise WheelError(f"{path.name} is not a wheel (not a zip archive)")
    actual = sha256_of(path)
    if actual != expected_sha256.lower():
        raise WheelError(
            f"{path.name}: SHA-256 {actual} differs from the expected {expected_sha256}"
        )
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        metadata = [n for n in names if n.endswith(".dist-info/METADATA")]
        tags = [n for n in names if n.endswith(".dist-info/WHEEL")]
        if not metadata or not tags:
            raise WheelError(f"{path.name} has no .dist-info/METADATA and WHEEL: not a wheel")
        about = _fields(wheel.read(metadata[0]).decode("utf-8", "replace"))
        tag = _fields(wheel.read(tags[0]).decode("utf-8", "replace")).get("Tag", "")
    name = about.get("Name", "").replace("-", "_").replace(".", "_").lower()
    if name != EXPECTED_PROJECT:
        raise WheelError(
            f"{path.name} is {about.get('Name')!r}, not onnxruntime-gpu (the CPU package "
            "beside the GPU one would hide CUDA)"
        )
    if python_tag and not tag.startswith(python_tag + "-"):
        raise WheelError(
            f"{path.name} is built for {tag or 'an unknown Python'}, but the image runs "
            f"{python_tag}: get the {python_tag} wheel for this JetPack"
        )
    return f"{name}-{about.get('Version', '0')}-{tag}.whl"


def download(url: str, folder: Path) -> Path:
    """Stream `url` into a file in `folder`; its name does not matter (see `save`)."""
    target = Path(tempfile.mkstemp(dir=str(folder), suffix=".download")[1])
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, target.open(
        "wb"
    ) as out:
        shutil.copyfileobj(response, out, 1 << 20)
    return target


def save(source: Path, expected_sha256: str, dest: Path, python_tag: str = "") -> Path:
    """Check `source` and put it into `dest` under the wheel's real name."""
    proper = dest / check_wheel(source, expected_sha256, python_tag)
    if source.resolve() != proper.resolve():
        shutil.copyfile(str(source), str(proper))
    return proper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sha256", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path)
    source.add_argument("--url")
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--python-tag", default="", help="e.g. cp310: refuse other wheels")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    downloaded = None
    try:
        if args.url:
            downloaded = download(args.url, args.dest)
        wheel = save(downloaded or args.file, args.sha256, args.dest, args.python_tag)
        print(f"fetch_wheel: {wheel.name} OK")
    except (WheelError, OSError) as error:
        print(f"fetch_wheel: {error}", file=sys.stderr)
        return 1
    finally:
        if downloaded is not None:
            downloaded.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
