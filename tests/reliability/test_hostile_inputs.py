"""Inputs built to break parsers get a clear 4xx naming the limit or the problem, never a 500."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.scorer_process import ScorerProcess, memory_mb, worker_pid

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def server(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from tests.scorer_process import scorer_env

    process = ScorerProcess(
        scorer_env(demo_dir / "models" / "colors", tmp_path_factory.mktemp("c"), PROVIDERS="cpu")
    )
    process.wait_ready()
    yield process
    process.stop()


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header(width: int, height: int) -> bytes:
    """A 70-byte PNG that claims a size in its header and holds almost no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(16))
    signature = bytes([0x89]) + b"PNG\r\n" + bytes([0x1A]) + b"\n"
    return signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def code_of(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.mark.parametrize("side", [10_000, 50_000])
def test_a_huge_claimed_size_reports_our_own_limit(server: ScorerProcess, side: int) -> None:
    response = requests.post(
        server.url + "/score", data=png_header(side, side), headers={"Content-Type": "image/png"}
    )
    assert code_of(response) == (413, "IMAGE_TOO_LARGE")
    assert "SCORER_MAX_IMAGE_PIXELS" in response.json()["error"]["message"]


def test_a_text_form_field_that_is_not_latin_1_is_400(server: ScorerProcess) -> None:
    response = requests.post(server.url + "/image", data={"imageData": "ümlaut → ☃"})
    assert code_of(response) == (400, "INVALID_IMAGE")


def test_too_many_multipart_parts_is_an_argument_error_not_a_size_error(
    server: ScorerProcess,
) -> None:
    fields = {f"f{i}": "x" for i in range(1001)}
    response = requests.post(server.url + "/score", files={"image": b"x"}, data=fields)
    assert code_of(response) == (400, "INVALID_ARGUMENT")
    assert "parts" in response.json()["error"]["message"]


def test_a_body_over_the_limit_names_its_setting(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    small = start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu", MAX_BODY_BYTES="1000")
    response = requests.post(
        small.url + "/score", data=b"\xff" * 2000, headers={"Content-Type": "image/jpeg"}
    )
    assert code_of(response) == (413, "BODY_TOO_LARGE")
    assert "SCORER_MAX_BODY_BYTES" in response.json()["error"]["message"]


@pytest.mark.parametrize("model", ["colors", "squares-yolo"])
def test_elongated_images_are_refused_before_any_pixel_is_made(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path, model: str
) -> None:
    """A 122-byte PNG of 1x10,000 took 2.7 GB (and 1x100,000 a 500 MemoryError); 20,000,000x1
    took 3.8 GB on the YOLO demo off TensorRT, 2.9 GB of it still resident after."""
    server = start_scorer(demo_dir / "models" / model, PROVIDERS="cpu")
    for size in ((1, 10_000), (1, 100_000), (20_000_000, 1)):
        response = requests.post(
            server.url + "/score", data=png_header(*size), headers={"Content-Type": "image/png"}
        )
        assert code_of(response) == (413, "IMAGE_TOO_LARGE"), size
        assert "SCORER_MAX_IMAGE_ASPECT" in response.json()["error"]["message"]


def solid_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_largest_images_the_limits_allow_leave_memory_near_where_it_was(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    """The YOLO demo sized by pixel count (its input follows the image) on the most elongated
    images at the most pixels allowed, both ways: the worker's resident memory, ONNX
    Runtime's arena included, ends near where ordinary frames left it."""
    server = start_scorer(demo_dir / "models" / "squares-yolo", PROVIDERS="cpu")
    worker = worker_pid(server.proc.pid)
    ordinary = (demo_dir / "images" / "squares.jpg").read_bytes()
    for _ in range(5):
        assert requests.post(server.url + "/score", data=ordinary,
                             headers={"Content-Type": "image/jpeg"}).status_code == 200  # fmt: skip
    baseline = memory_mb(worker, "VmRSS")
    for size in ((24_992, 1_562), (1_562, 24_992)):  # 16:1, 39 million pixels
        body = solid_png(*size)
        for _ in range(2):
            response = requests.post(
                server.url + "/score", data=body, headers={"Content-Type": "image/png"}
            )
            assert response.status_code == 200, response.text
    after = memory_mb(worker, "VmRSS")
    peak = memory_mb(worker, "VmHWM")
    assert peak > baseline + 100, "the large images did not take memory: the test tests nothing"
    assert after - baseline < 0.25 * (peak - baseline), f"{baseline=} {after=} {peak=} MB"
