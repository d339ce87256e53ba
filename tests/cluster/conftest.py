"""The cluster tests (`make test-cluster`): Baton on the engines' distributed modes, with failures.

They need a Docker engine: skipped when none answers, unless BATON_REQUIRE_DOCKER=1 (`make test-cluster`,
CI), which turns that into a failure.
"""

from __future__ import annotations

import pytest

from tests.compose.conftest import require_engine


@pytest.fixture(scope="session")
def docker_engine() -> None:
    require_engine()
