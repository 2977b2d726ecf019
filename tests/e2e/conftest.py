"""Fixtures of the end-to-end tests: one real daemon (`xcodec-stream serve`, the built-in checkpoint) on an
ephemeral port, and the same model loaded in the test process for offline references."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_stack import Daemon, model_ref, start_daemon, stop_daemon


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Shared by the e2e tests (starting one costs seconds); each test uses its own sessions and room names."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"))
    try:
        yield d
    finally:
        stop_daemon(d)
        print(f"daemon log: {d.log}")


@pytest.fixture(scope="session")
def served_model():
    """The model the daemon serves, loaded here (treat as read-only)."""
    from xcodec_stream import XcodecModel

    return XcodecModel.from_pretrained(model_ref())
