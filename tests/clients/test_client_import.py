"""A client needs no torch: `import xcodec_stream.clients` must not load it (package __init__s are lazy)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_client_library_does_not_load_torch() -> None:
    code = (
        "import sys, xcodec_stream.clients\n"
        "from xcodec_stream.clients import Client, listen, stream\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded[:5]\n"
        "import xcodec_stream\n"
        "assert xcodec_stream.XcodecModel.__name__ == 'XcodecModel'  # still there, on first use\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
