"""Fixtures for the serving tests (helpers in serving_helpers.py, the fake codec in fakes.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def fake_model():
    from fakes import FakeModel

    return FakeModel()
