"""Fuzzing the protocol decoder (hypothesis): random bytes, random msgpack structures and mutated valid
messages are either parsed or rejected with ProtocolError (a stable code), never anything else."""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xcodec_stream.serving.arrays import pack_array
from xcodec_stream.serving.protocol import ERRORS, ProtocolError, parse_client_message, unpack_server_message

SETTINGS = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
STRUCTURES = settings(SETTINGS, max_examples=120)  # generating nested structures is the slow part

TYPES = ["hello", "audio", "codes", "flush", "stats", "ack", "ready", "error", ""]
FIELDS = ["version", "mode", "sample_rate", "format", "bandwidth", "latency", "room", "want", "client",
          "stats_interval_ms", "resume", "sample", "frame", "seq", "pcm", "codes", "dtype", "shape", "data"]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=64)
    | st.sampled_from(TYPES + FIELDS + ["loopback", "decode", "listen", "f32", "s16", "<f4", "<i2", "<u2"])
)
keys = st.sampled_from(FIELDS + ["type"]) | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=6),
    max_leaves=12,
)


def valid_frames() -> list[bytes]:
    pcm = pack_array(np.linspace(-1, 1, 16, dtype="<f4"))
    codes = pack_array(np.arange(8, dtype="<u2").reshape(2, 4))
    msgs = [
        {"type": "hello", "version": 1, "mode": "loopback", "sample_rate": 48000, "format": "s16",
         "want": ["audio", "codes"], "latency": "low", "bandwidth": 2.0, "client": "x", "stats_interval_ms": 500},
        {"type": "hello", "version": 1, "mode": "listen", "room": "a-room"},
        {"type": "hello", "version": 1, "resume": "abcdefghijklmnopqrstuv", "sample": 10, "frame": 2},
        {"type": "audio", "seq": 3, "pcm": pcm},
        {"type": "codes", "frame": 0, "codes": codes},
        {"type": "ack", "sample": 100, "frame": 5},
        {"type": "flush"},
        {"type": "stats"},
    ]  # fmt: skip
    return [msgpack.packb(m, use_bin_type=True) for m in msgs]


VALID = valid_frames()


def parses_or_protocol_error(data: bytes | str) -> None:
    try:
        parse_client_message(data)
    except ProtocolError as err:
        assert err.code in ERRORS and err.message


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    parses_or_protocol_error(data)
    try:
        unpack_server_message(data)
    except ProtocolError:
        pass


@SETTINGS
@given(st.text(max_size=100))
def test_text_frames(text: str) -> None:
    parses_or_protocol_error(text)


@STRUCTURES
@given(values)
def test_random_msgpack_structures(obj: object) -> None:
    parses_or_protocol_error(msgpack.packb(obj, use_bin_type=True))


@STRUCTURES
@given(st.sampled_from(TYPES), st.dictionaries(keys, values, max_size=6))
def test_random_messages_of_each_type(kind: str, fields: dict) -> None:
    parses_or_protocol_error(msgpack.packb({**fields, "type": kind}, use_bin_type=True))


@SETTINGS
@given(
    st.sampled_from(range(len(VALID))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("xdi")), max_size=6),
    st.integers(0, 10_000),
)
def test_mutated_valid_frames(index: int, edits: list, cut: int) -> None:
    """Byte flips, deletions and insertions, then a truncation, of a valid frame."""
    data = bytearray(VALID[index])
    for pos, byte, op in edits:
        pos %= max(1, len(data))
        if op == "x" and data:
            data[pos] ^= byte or 1
        elif op == "d" and data:
            del data[pos]
        else:
            data.insert(pos, byte)
    parses_or_protocol_error(bytes(data[: max(1, len(data) - cut % 8)]))


@STRUCTURES
@given(st.sampled_from(range(len(VALID))), keys, values, st.booleans())
def test_structurally_mutated_valid_messages(index: int, key: str, value: object, delete: bool) -> None:
    """A field of a valid message replaced by anything, or removed; also inside its array map."""
    msg = msgpack.unpackb(VALID[index], raw=False)
    target = msg
    array = next((k for k in ("pcm", "codes") if isinstance(msg.get(k), dict)), None)
    if array is not None and isinstance(value, bool) and value:
        target = msg[array]
    if delete:
        target.pop(key, None)
    else:
        target[key] = value
    parses_or_protocol_error(msgpack.packb(msg, use_bin_type=True))
