"""Shared test setup."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

# This machine is shared and noisy: timing-based hypothesis failures would be flakes, not bugs.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run the long soak variants")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant: run with `make soak`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
