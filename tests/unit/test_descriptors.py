"""How many file descriptors the scorer asks for, and what it does when it cannot have them."""

from __future__ import annotations

import resource

import pytest
from scorer.descriptors import RESERVE, DescriptorPlan, plan

NEEDED_FOR_1000 = 2 * 1000 + RESERVE


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [
        # Docker Engine 29's default for containers: the soft limit is raised, nothing is cut
        (1024, 524288, DescriptorPlan(NEEDED_FOR_1000, 1000)),
        # already enough
        (1048576, 1048576, DescriptorPlan(None, 1000)),
        (resource.RLIM_INFINITY, resource.RLIM_INFINITY, DescriptorPlan(None, 1000)),
        (1024, resource.RLIM_INFINITY, DescriptorPlan(NEEDED_FOR_1000, 1000)),
        # the hard limit is too low: raised to it, and the connections cut to fit
        (256, 1024, DescriptorPlan(1024, (1024 - RESERVE) // 2)),
        (1024, 1024, DescriptorPlan(None, (1024 - RESERVE) // 2)),
        # not even the reserve fits: still one connection each
        (64, 64, DescriptorPlan(None, 1)),
    ],
)
def test_the_plan_for_a_thousand_connections_per_server(
    soft: int, hard: int, expected: DescriptorPlan
) -> None:
    assert plan(1000, soft, hard) == expected


def test_a_soft_limit_is_never_lowered() -> None:
    assert plan(10, 100_000, 200_000) == DescriptorPlan(None, 10)
