"""The model worker: one thread batching every session's input into static engine steps.

`Worker` (thread.py) composes the parts: `slots` (the engines' slot pool), `engines` (per-preset engines and
their background builds), `inputs` (per-stream input queues), `tick` (one tick: picking the work, the guarded
engine steps) and `outputs` (engine outputs shaped into each stream's StepResult); `api` holds the types
sessions exchange with it. `process` runs a Worker in a child process behind the same API, and `pool` spreads
streams over several of them (`[worker] processes`).
"""

from .api import CODEC_RATE, OVERHEAD_TICKS, EngineInfo, StepResult, StreamSpec, WorkerFull
from .inputs import LIVE_S
from .outputs import n_q_for
from .thread import Worker, percentile_ms
from .tick import OOM_ERRORS

__all__ = [
    "CODEC_RATE",
    "LIVE_S",
    "OOM_ERRORS",
    "OVERHEAD_TICKS",
    "EngineInfo",
    "StepResult",
    "StreamSpec",
    "Worker",
    "WorkerFull",
    "n_q_for",
    "percentile_ms",
]
