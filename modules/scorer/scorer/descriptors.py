"""File descriptors for the front ends' connection limits, checked once at start.

Each front end may hold `SCORER_MAX_CONNECTIONS` client connections, one descriptor each, in
the one worker process. Docker Engine 29 (containerd 2.1.5) and later start containers with
systemd's default of 1024 descriptors soft and 524288 hard (Docker's 29.0 release notes;
earlier engines gave 1048576), which would run out under a flood long before the limits are
reached; a process may raise its own soft limit up to the hard one, and the scorer does so at
start. Where even the hard limit is too low, the connection limit is cut to fit.
"""

from __future__ import annotations

import dataclasses
import logging
import resource

log = logging.getLogger(__name__)

FRONT_ENDS = 2  # HTTP and gRPC, each with its own connection limit
# Everything else the worker opens: the listeners, model and cache files, the spool of
# results, pipes and event descriptors of its threads and of gRPC's core.
RESERVE = 256


@dataclasses.dataclass(frozen=True)
class DescriptorPlan:
    """The soft limit to set (None: leave it) and the connections per front end that fit."""

    soft_limit: int | None
    connections: int


def plan(wanted_connections: int, soft: int, hard: int) -> DescriptorPlan:
    """What `wanted_connections` per front end need, given the current limits."""
    needed = FRONT_ENDS * wanted_connections + RESERVE
    ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    raise_to = ceiling if soft != resource.RLIM_INFINITY and soft < ceiling else None
    available = soft if raise_to is None else raise_to
    if available == resource.RLIM_INFINITY or available >= needed:
        return DescriptorPlan(raise_to, wanted_connections)
    return DescriptorPlan(raise_to, max(1, (available - RESERVE) // FRONT_ENDS))


def ensure_for(wanted_connections: int) -> int:
    """Raise this process's soft descriptor limit for `wanted_connections` per front end (its
    children, the worker included, inherit it); the connections per front end that fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    chosen = plan(wanted_connections, soft, hard)
    if chosen.soft_limit is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (chosen.soft_limit, hard))
        log.info("file descriptor limit raised from %d to %d", soft, chosen.soft_limit)
    if chosen.connections < wanted_connections:
        log.warning(
            "only %d file descriptors may be open (ulimit -n; docker --ulimit nofile): "
            "SCORER_MAX_CONNECTIONS is %d per server instead of %d",
            chosen.soft_limit or soft,
            chosen.connections,
            wanted_connections,
        )
    return chosen.connections
