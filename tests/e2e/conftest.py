"""Fixtures of the end-to-end tests: one real daemon (`xcodec-stream serve`, random:tiny) on an ephemeral port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_stack import Daemon, start_daemon, stop_daemon


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Shared by the e2e tests (starting one costs seconds); each test uses its own sessions and room names."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"))
    try:
        yield d
    finally:
        stop_daemon(d)
        print(f"daemon log: {d.log}")
