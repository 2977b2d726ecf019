"""`bench/op_shapes.py`: the products a run makes are recorded with their shapes (also inside inference mode,
where linear reaches the recorder whole) and replayed alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xcodec_stream.bench.op_shapes import record, replay_seconds


def test_records_every_product_with_its_shapes_and_count():
    x, w, b = torch.randn(7, 64), torch.randn(256, 64), torch.randn(256)
    sig, k = torch.randn(2, 4, 100), torch.randn(8, 4, 7)

    def run() -> None:
        with torch.inference_mode():
            for _ in range(3):
                F.linear(x, w, b)
            F.conv1d(sig, k, dilation=3)
            torch.relu(sig)  # not a product: not recorded

    calls = record(run)
    ops = {func.overloadpacket.__name__: n for (func, _, _), n in calls.items()}
    assert ops == {"addmm": 3, "convolution": 1}
    (addmm_args,) = [args for (func, args, _) in calls if func.overloadpacket.__name__ == "addmm"]
    assert [a[1] for a in addmm_args] == [(256,), (7, 64), (64, 256)]  # bias, input, transposed weight
    (conv_args,) = [args for (func, args, _) in calls if func.overloadpacket.__name__ == "convolution"]
    assert conv_args[0][1] == (2, 4, 100) and conv_args[5] == (3,)  # input shape, dilation
    seconds = replay_seconds(calls, reps=2)
    assert 0 < seconds < 1


def test_nothing_recorded_gives_zero():
    assert replay_seconds(record(lambda: torch.ones(3).sum())) == 0.0
