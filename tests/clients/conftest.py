"""Fixtures for the client tests: the serving tests' fake codec and in-process daemon."""

from __future__ import annotations

import sys
from pathlib import Path

# the fake codec and the server fixture live with the serving tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
