"""The cluster tests (`make test-cluster`): Baton on the engines' distributed modes, with failures.

They need a Docker engine: skipped when none answers, unless BATON_REQUIRE_DOCKER=1 (`make test-cluster`,
CI), which turns that into a failure.
"""

from __future__ import annotations

import pytest

from tests.compose.conftest import require_engine
from tests.conftest import LOCAL_CLUSTER, cluster_mode


@pytest.fixture(scope="session")
def docker_engine() -> None:
    require_engine()


@pytest.fixture
def local_cluster(real_servers):
    """The session's Valkey cluster (started with `real_servers`), for tests that change it."""
    assert cluster_mode() and LOCAL_CLUSTER, (
        "these tests need the session on a Valkey cluster: BATON_TEST_SERVERS=cluster (make test-cluster)"
    )
    return LOCAL_CLUSTER[0]
