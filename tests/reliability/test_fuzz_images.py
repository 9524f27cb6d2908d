"""Mutation fuzzing of real JPEG, PNG and BMP files against the live server.

Each run mutates the seed images (bit flips, overwritten bytes, cuts, repeated and removed
spans, edited header fields) into 2,400 request bodies. Every answer must be 200, 400 or 413,
never a 5xx, and the worker must never restart. The seed of the random mutations is printed
with any failure, so `FUZZ_SEED=<seed>` replays it.
"""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import SHARED_IMAGES
from tests.scorer_process import ScorerProcess, scorer_env

pytestmark = pytest.mark.reliability

MUTANTS_PER_SEED_IMAGE = 400
ALLOWED = {200, 400, 413}


def seed_images(demo_dir: Path) -> list[tuple[str, bytes]]:
    """Small real files of each format: demo JPEGs, and the same pictures as PNG and BMP."""
    found = []
    for path in sorted((demo_dir / "images").glob("*.jpg"))[:2]:
        found.append(("image/jpeg", path.read_bytes()))
        picture = Image.open(path).convert("RGB").resize((64, 48))
        for fmt, mime in (("PNG", "image/png"), ("BMP", "image/bmp")):
            buffer = io.BytesIO()
            picture.save(buffer, fmt)
            found.append((mime, buffer.getvalue()))
    if SHARED_IMAGES.is_dir():  # a real camera JPEG with EXIF, when the photos are here
        photo = SHARED_IMAGES / "chelsea-exif-orientation-6.jpg"
        found.append(("image/jpeg", photo.read_bytes()))
    return found


def mutate(data: bytes, rng: random.Random) -> bytes:
    body = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not body:  # a removed span took it all: an empty body is a case of its own
            break
        choice = rng.randrange(6)
        where = rng.randrange(len(body)) if body else 0
        if choice == 0:  # flip bits
            body[where] ^= 1 << rng.randrange(8)
        elif choice == 1:  # overwrite a byte with an interesting value
            body[where] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01))
        elif choice == 2:  # cut the file
            del body[rng.randrange(1, max(2, len(body))) :]
        elif choice == 3:  # repeat a span
            span = body[where : where + rng.randint(1, 64)]
            body[where:where] = span * rng.randint(1, 8)
        elif choice == 4:  # remove a span
            del body[where : where + rng.randint(1, 256)]
        else:  # a header field (sizes, counts, offsets) set to an extreme
            field = rng.randrange(min(64, len(body)))
            body[field : field + 2] = rng.choice((b"\xff\xff", b"\x00\x00", b"\x7f\xff"))
    return bytes(body)


@pytest.fixture(scope="module")
def server(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    process = ScorerProcess(
        scorer_env(
            demo_dir / "models" / "squares",
            tmp_path_factory.mktemp("fuzz"),
            PROVIDERS="cpu",
            MAX_IMAGE_PIXELS="4000000",
        )
    )
    process.wait_ready()
    yield process
    process.stop()


def test_mutated_images_get_200_400_or_413_and_never_restart_the_worker(
    server: ScorerProcess, demo_dir: Path
) -> None:
    seed = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
    rng = random.Random(seed)
    session = requests.Session()
    seen: dict[int, int] = {}
    for mime, original in seed_images(demo_dir):
        for _ in range(MUTANTS_PER_SEED_IMAGE):
            body = mutate(original, rng)
            response = session.post(
                server.url + "/score", data=body, headers={"Content-Type": mime}, timeout=30
            )
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code in ALLOWED, (
                f"FUZZ_SEED={seed}: {response.status_code} {response.text[:300]}"
            )
            if response.status_code != 200:
                assert response.json()["error"]["code"] in {
                    "INVALID_IMAGE", "IMAGE_TOO_LARGE", "EMPTY_BODY"
                }  # fmt: skip
    assert sum(seen.values()) >= 2000 and seen.get(200) and seen.get(400), (seed, seen)
    boots = re.findall(r"Booting worker with pid", server.log)
    assert len(boots) == 1, f"FUZZ_SEED={seed}: the worker restarted\n{server.log[-2000:]}"


def test_the_mutator_copes_with_a_body_it_emptied() -> None:
    """A removed span can take a whole small body; the next mutation must not fail."""
    for seed in range(2000):
        rng = random.Random(seed)
        for _ in range(5):
            assert isinstance(mutate(b"ab", rng), bytes)
