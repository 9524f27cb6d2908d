"""A model version rolled out ring by ring with IoT Hub's own at-scale machinery.

Each ring is one layered deployment that sets the scorer's desired `model`, targets the
devices tagged `tags.ring='<ring>'` (the tag-equality form of target condition Microsoft
documents; tag the rest of the fleet `all`, say) and has a higher priority than the ring
before it and than every earlier model rollout. IoT Hub evaluates a deployment's metrics when
it is created and every 5 minutes after, so a ring takes at least that long. Its custom
metrics count the scorer module twins that report the version `ready` and those that report
its install `failed`; IoT Hub evaluates them. A ring passes when at least `threshold` percent
of the devices it targets are ready; a failure, or the ring's time limit, stops the rollout
and rolls that ring back to the previous rollout's model.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from typing import Any

SOLUTION = {"solution": "customvision-edge"}
KIND = "model-rollout"
FIRST_PRIORITY = 100


@dataclasses.dataclass(frozen=True)
class Model:
    version: str
    url: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class RingCounts:
    targeted: int
    ready: int
    failed: int


class RolloutFailed(Exception):
    """A ring did not pass; the message is the summary."""


def slug(text: str) -> str:
    """A piece of a deployment id (lower case letters, digits and '-')."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def deployment_id(version: str, ring: str) -> str:
    return f"model-{slug(version)}-{slug(ring)}"[:128]


def target_condition(ring: str) -> str:
    return f"tags.ring='{quote(ring)}'"


def quote(text: str) -> str:
    return text.replace("'", "''")


def metrics_queries(rollout_id: str, version: str) -> dict[str, str]:
    """Devices whose scorer runs `version` (ready), and whose install of it failed."""
    base = (
        "SELECT deviceId FROM devices.modules WHERE moduleId = 'scorer' AND "
        f"properties.desired.model.rollout = '{quote(rollout_id)}' AND "
    )
    return {
        "modelReady": base + f"properties.reported.model.version = '{quote(version)}' AND "
        "properties.reported.model.state = 'ready'",
        "modelFailed": base + f"properties.reported.model.target = '{quote(version)}' AND "
        "properties.reported.model.state = 'failed'",
    }


def content(model: Model, rollout_id: str) -> dict[str, Any]:
    """The layered deployment's modules content: only the scorer's desired `model`."""
    desired = {**dataclasses.asdict(model), "rollout": rollout_id}
    return {"scorer": {"properties.desired.model": desired}}


def counts(configuration: Any) -> RingCounts:
    system = (configuration.system_metrics.results if configuration.system_metrics else None) or {}
    custom = (configuration.metrics.results if configuration.metrics else None) or {}
    return RingCounts(
        int(system.get("targetedCount", 0)),
        int(custom.get("modelReady", 0)),
        int(custom.get("modelFailed", 0)),
    )


def passed(ring: RingCounts, threshold: float) -> bool:
    return ring.targeted > 0 and ring.ready >= math.ceil(ring.targeted * threshold / 100)


def rollouts(manager: Any, call: Callable[..., Any]) -> list[Any]:
    """Every model rollout deployment on the hub, highest priority first."""
    everything = call("deployments", manager.get_configurations, 1000)
    ours = [c for c in everything if (c.labels or {}).get("kind") == KIND]
    return sorted(ours, key=lambda c: -(c.priority or 0))


def previous_model(existing: list[Any], version: str) -> Model | None:
    """The model of the highest-priority rollout of another version: what a rollback restores."""
    for configuration in existing:
        desired = configuration.content.modules_content["scorer"]["properties.desired.model"]
        if desired["version"] != version:
            return Model(desired["version"], desired["url"], desired["sha256"])
    return None


def create(
    manager: Any,
    call: Callable[..., Any],
    model: Model,
    ring: str,
    priority: int,
    rollout_id: str,
    **labels: str,
) -> None:
    from azure.iot.hub.models import Configuration, ConfigurationContent, ConfigurationMetrics

    configuration = Configuration(
        id=rollout_id,
        schema_version="1.0",
        labels={**SOLUTION, "kind": KIND, "ring": ring, "modelVersion": model.version, **labels},
        content=ConfigurationContent(modules_content=content(model, rollout_id)),
        target_condition=target_condition(ring),
        priority=priority,
        metrics=ConfigurationMetrics(queries=metrics_queries(rollout_id, model.version)),
    )
    call(f"deployment {rollout_id}", manager.create_configuration, configuration)


def roll_out(
    manager: Any,
    call: Callable[..., Any],
    model: Model,
    rings: list[str],
    threshold: float,
    ring_timeout_s: float,
    poll_s: float,
    say: Callable[[str], None] = print,
) -> None:
    """Ring after ring; raises RolloutFailed (after the rollback) when one does not pass."""
    existing = rollouts(manager, call)
    previous = previous_model(existing, model.version)
    base = max([FIRST_PRIORITY - 1, *(c.priority or 0 for c in existing)]) + 1
    for index, ring in enumerate(rings):
        rollout_id = deployment_id(model.version, ring)
        create(manager, call, model, ring, base + index, rollout_id)
        say(f"{ring}: {rollout_id} created (priority {base + index}, {target_condition(ring)})")
        deadline = time.monotonic() + ring_timeout_s
        while True:
            time.sleep(poll_s)
            ring_counts = counts(call(rollout_id, manager.get_configuration, rollout_id))
            say(
                f"{ring}: {ring_counts.ready}/{ring_counts.targeted} ready, "
                f"{ring_counts.failed} failed"
            )
            if ring_counts.failed:
                why = f"{ring_counts.failed} device(s) failed to install {model.version}"
            elif passed(ring_counts, threshold):
                break
            elif time.monotonic() > deadline:
                why = f"not {threshold:g}% ready within {ring_timeout_s:g} s"
            else:
                continue
            roll_back(manager, call, ring, rollout_id, previous, base + len(rings), say)
            raise RolloutFailed(
                f"ring {ring} of {model.version} failed ({why}); "
                + (
                    f"rolled back to {previous.version}"
                    if previous
                    else "no earlier rollout to return to: its deployment was deleted"
                )
                + (f"; rings {', '.join(rings[:index])} kept it" if index else "")
            )
    say(f"{model.version} rolled out to {', '.join(rings)}")


def roll_back(
    manager: Any,
    call: Callable[..., Any],
    ring: str,
    failed_id: str,
    previous: Model | None,
    priority: int,
    say: Callable[[str], None],
) -> None:
    """The ring's devices back on the previous model: a deployment of it above the failed
    one, then the failed one deleted."""
    if previous is not None:
        back_id = deployment_id(previous.version, ring) + "-rollback"
        create(manager, call, previous, ring, priority, back_id, rollbackOf=failed_id)
        say(f"{ring}: {back_id} created (priority {priority}): back to {previous.version}")
    call(f"deployment {failed_id}", manager.delete_configuration, failed_id, "*")
    say(f"{ring}: {failed_id} deleted")


def status_lines(manager: Any, call: Callable[..., Any], version: str | None) -> list[str]:
    """One line per ring deployment (of `version`, or of every rollout)."""
    lines = []
    for configuration in rollouts(manager, call):
        labels = configuration.labels or {}
        if version is not None and labels.get("modelVersion") != version:
            continue
        ring = counts(configuration)
        lines.append(
            f"{configuration.id:40} {labels.get('ring', '?'):10} priority "
            f"{configuration.priority:>4}  {ring.ready}/{ring.targeted} ready, "
            f"{ring.failed} failed"
        )
    return lines
