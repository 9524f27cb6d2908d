#!/usr/bin/env python3
"""What a 10 frame/s camera costs upstream per day, by policy: messages and IoT Hub's 4 KB units.

Feeds one simulated hour of a camera (10 results a second; a dog in view for about 5 s
every few minutes, a cat now and then) through the relay's real engine and spool, with a
clock of its own, for each policy, and sends what is spooled through the real forwarder on
the same clock (so results are batched as they would be); counts the messages sent and
extrapolates to a day. The baseline forwards every result as its own message. Last, how long
a start takes with a spool at its default bound, which the start-up integrity check reads
whole (with the page cache dropped first when run as root: the first start after a reboot).

    .venv/bin/python bench/relay_cost.py
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "modules" / "relay")]

from relay.policy import AlertRule, MessageKind, Outgoing, Policy, apply_desired  # noqa: E402
from relay.relay import Forwarder, Relay  # noqa: E402
from relay.spool import Spool  # noqa: E402

FPS, SECONDS = 10, 3600
UNIT = 4096  # IoT Hub meters device-to-cloud messages in 4 KB blocks


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def frames(rng: random.Random) -> list[dict]:
    """One hour of results: background scores every frame, a dog now and then."""
    results, dog_until = [], -1.0
    for i in range(FPS * SECONDS):
        t = i / FPS
        if t > dog_until and rng.random() < 1 / (FPS * 240):  # about every 4 minutes
            dog_until = t + 5
        predictions = [{"tagName": "background", "probability": 0.6, "tagId": 0}]
        if t <= dog_until:
            predictions.append({"tagName": "dog", "probability": 0.9, "tagId": 1})
        if rng.random() < 0.01:
            predictions.append({"tagName": "cat", "probability": 0.55, "tagId": 2})
        results.append({"id": f"r{i}", "created": "2026-11-30T00:00:00.000Z",
                        "model": {"name": "m", "version": "1", "kind": "classification"},
                        "predictions": predictions})  # fmt: skip
    return results


def cost(policy: Policy, results: list[dict], folder: Path) -> tuple[int, int]:
    """(messages, 4 KB units) sent upstream for one hour."""
    spool = Spool(folder / f"{id(policy)}.db", 1 << 30)
    clock = Clock()
    relay = Relay(spool, policy, clock)
    sent: list[Outgoing] = []
    forwarder = Forwarder(spool, sent.append, policy=lambda: policy, clock=clock)
    for result in results:
        relay.handle(json.dumps(result).encode())
        clock.now += 1 / FPS
        relay.close_window()
        forwarder.send_ready(policy)
    relay.close_window(force=True)
    clock.now += policy.result_batch_s
    forwarder.send_ready(policy)
    spool.close()
    return len(sent), sum(math.ceil(len(m.body) / UNIT) for m in sent)


def throughput(results: list[dict], folder: Path) -> tuple[float, float]:
    """(results/s handled in, messages/s sent out) with every result forwarded, on this disk;
    `send` returns at once, so this is the relay's own cost per message."""
    spool = Spool(folder / "throughput.db", 1 << 30)
    policy = Policy(0.0, max_messages_per_minute=1_000_000)
    relay = Relay(spool, policy)
    sample = results[:5000]
    started = time.perf_counter()
    for result in sample:
        relay.handle(json.dumps(result).encode())
    handled = time.perf_counter() - started
    sent: list[Outgoing] = []
    forwarder = Forwarder(spool, sent.append, policy=lambda: policy)
    started = time.perf_counter()
    forwarder.send_ready(policy)
    sending = time.perf_counter() - started
    spool.close()
    return len(sample) / handled, len(sent) / sending


def start_with_a_full_spool(folder: Path, max_bytes: int = 256 * 1024 * 1024) -> str:
    """How long opening a spool filled to `max_bytes` takes (its `quick_check` reads it all)."""
    path = folder / "full.db"
    spool = Spool(path, max_bytes)
    body = b"r" * 1000
    for chunk in range(max_bytes // (1000 * 1000) + 1):
        with spool.transaction() as db:
            for i in range(1000):
                spool.enqueue(db, Outgoing(MessageKind.RESULT, body, f"m-{chunk}-{i}"))
    spool.close()
    cold = os.geteuid() == 0
    if cold:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    started = time.perf_counter()
    Spool(path, max_bytes).close()
    return (
        f"a start with the spool at its bound ({path.stat().st_size / 1e6:.0f} MB):"
        f" {time.perf_counter() - started:.2f} s ({'page cache dropped' if cold else 'warm'})"
    )


def main() -> int:
    results = frames(random.Random(7))
    baseline_messages = len(results)
    baseline_units = sum(math.ceil(len(json.dumps(r).encode()) / UNIT) for r in results)
    default, _ = apply_desired(
        Policy(),
        json.loads((REPO / "deployment.template.json").read_text())["modulesContent"]["relay"][
            "properties.desired"
        ],
    )
    policies = {
        "deployed default (summaries 5 min)": default,
        "default + alert on dog, 60 s cool-down": Policy(
            **{**default.__dict__, "alerts": (AlertRule("dog"),)}
        ),
        "default + alert on dog, no cool-down": Policy(
            **{**default.__dict__, "alerts": (AlertRule("dog"),), "alert_cooldown_s": 0.0}
        ),
        "default + 60 results/min, batched every 10 s": Policy(
            **{**default.__dict__, "max_messages_per_minute": 60, "result_batch_s": 10.0}
        ),
        "old default (60 results/min, 1 min summaries)": Policy(),
    }
    print(f"\n{FPS} frames/s for {SECONDS} s, extrapolated to a day")
    print(f"{'policy':48} {'messages/day':>13} {'4 KB units/day':>15} {'fewer than all':>15}")
    print(f"{'forward every result':48} {baseline_messages * 24:>13,} {baseline_units * 24:>15,}"
          f" {'1x':>15}")  # fmt: skip
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as d:
        for name, policy in policies.items():
            started = time.perf_counter()
            messages, units = cost(policy, results, Path(d))
            ratio = baseline_messages / max(messages, 1)
            print(f"{name:48} {messages * 24:>13,} {units * 24:>15,} {ratio:>14.0f}x"
                  f"   ({time.perf_counter() - started:.0f} s)")  # fmt: skip
        into, out = throughput(results, Path(d))
    print(f"\nthroughput, every result forwarded: {into:,.0f} results/s in,"
          f" {out:,.0f} messages/s out (one SQLite transaction each)")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=REPO) as on_disk:
        print(start_with_a_full_spool(Path(on_disk)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
