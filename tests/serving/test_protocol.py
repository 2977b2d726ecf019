"""Wire protocol without sockets: parsing, validation errors with stable codes, arrays, and a decoder fuzz."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcodec_stream.serving.arrays import ArrayError, pack_array, unpack_array
from xcodec_stream.serving.protocol import (
    ERRORS,
    Audio,
    Codes,
    Flush,
    Hello,
    ProtocolError,
    StatsRequest,
    float_to_pcm,
    pack,
    parse_client_message,
    pcm_to_float,
    unpack_server_message,
)


def frame(**msg) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def hello(**kw) -> bytes:
    return frame(**{"type": "hello", "version": 1, "mode": "loopback", **kw})


def code_of(data) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(data)
    return info.value.code


def test_hello_defaults_and_fields() -> None:
    h = parse_client_message(hello())
    assert h == Hello(version=1, mode="loopback")
    h = parse_client_message(
        hello(
            sample_rate=48000, format="s16", bandwidth=1, latency="low", want=["audio", "codes"], client="x"
        )
    )
    assert (h.sample_rate, h.format, h.bandwidth, h.latency, h.want) == (
        48000,
        "s16",
        1.0,
        "low",
        ("audio", "codes"),
    )
    h = parse_client_message(hello(mode="listen", room="r-1.a_b"))
    assert h.room == "r-1.a_b"


@pytest.mark.parametrize(
    "kw,code",
    [
        ({"version": 2}, "unsupported_version"),
        ({"version": "1"}, "bad_field"),
        ({"version": True}, "bad_field"),
        ({"mode": "karaoke"}, "bad_field"),
        ({"sample_rate": 7999}, "bad_field"),
        ({"sample_rate": 48001}, "bad_field"),
        ({"sample_rate": 16000.0}, "bad_field"),
        ({"format": "s24"}, "bad_field"),
        ({"bandwidth": float("nan")}, "bad_field"),
        ({"bandwidth": "4"}, "bad_field"),
        ({"latency": "instant"}, "bad_field"),
        ({"want": ["video"]}, "bad_field"),
        ({"want": []}, "bad_field"),
        ({"want": ["audio", "audio"]}, "bad_field"),
        ({"room": "r"}, "bad_field"),  # room outside publish/listen
        ({"mode": "listen"}, "bad_field"),  # room missing
        ({"mode": "listen", "room": "a b"}, "bad_field"),
        ({"mode": "encode", "want": ["audio"]}, "bad_field"),
        ({"client": "x" * 500}, "bad_field"),
        ({"stats_interval_ms": 5}, "bad_field"),
        ({"colour": "blue"}, "bad_field"),
    ],
)
def test_hello_errors(kw: dict, code: str) -> None:
    assert code_of(hello(**kw)) == code


def test_missing_required_field() -> None:
    assert code_of(frame(type="hello", mode="loopback")) == "bad_field"
    assert code_of(frame(type="audio", pcm=pack_array(np.zeros(3, "<f4")))) == "bad_field"


def test_audio_and_codes() -> None:
    pcm = np.arange(5, dtype="<i2")
    msg = parse_client_message(frame(type="audio", seq=3, pcm=pack_array(pcm)))
    assert isinstance(msg, Audio) and msg.seq == 3
    np.testing.assert_array_equal(msg.pcm, pcm)
    codes = np.arange(12, dtype="<u2").reshape(3, 4)
    msg = parse_client_message(frame(type="codes", frame=7, codes=pack_array(codes)))
    assert isinstance(msg, Codes) and msg.frame == 7
    np.testing.assert_array_equal(msg.codes, codes)
    assert isinstance(parse_client_message(frame(type="flush")), Flush)
    assert isinstance(parse_client_message(frame(type="stats")), StatsRequest)


@pytest.mark.parametrize(
    "pcm,code",
    [
        ({"dtype": "<f4", "shape": [3], "data": b"\0" * 11}, "bad_audio"),  # wrong byte length
        ({"dtype": "<i2", "shape": [2], "data": b"\0" * 3}, "bad_audio"),  # not a multiple of the sample size
        ({"dtype": ">f4", "shape": [1], "data": b"\0" * 4}, "bad_audio"),  # big-endian
        ({"dtype": "<f8", "shape": [1], "data": b"\0" * 8}, "bad_audio"),
        ({"dtype": "<u2", "shape": [1], "data": b"\0" * 2}, "bad_audio"),  # codes dtype as PCM
        ({"dtype": "<f4", "shape": [1, 1], "data": b"\0" * 4}, "bad_audio"),  # 2-D
        ({"dtype": "<f4", "shape": [-1], "data": b""}, "bad_audio"),
        ({"dtype": "<f4", "shape": [1], "data": "abcd"}, "bad_audio"),  # str instead of bin
        ({"dtype": "<f4", "shape": [1], "data": b"\0" * 4, "x": 1}, "bad_audio"),
        (pack_array(np.array([0.0, np.nan], "<f4")), "bad_audio"),
        (pack_array(np.array([np.inf], "<f4")), "bad_audio"),
        ([1, 2, 3], "bad_field"),
    ],
)
def test_bad_audio(pcm, code: str) -> None:
    assert code_of(frame(type="audio", seq=0, pcm=pcm)) == code


def test_bad_codes_and_seq_fields() -> None:
    assert code_of(frame(type="codes", frame=0, codes=pack_array(np.zeros(4, "<u2")))) == "bad_codes"
    assert code_of(frame(type="codes", frame=0, codes=pack_array(np.zeros((1, 4), "<i2")))) == "bad_codes"
    assert code_of(frame(type="codes", frame=-1, codes=pack_array(np.zeros((1, 4), "<u2")))) == "bad_field"
    assert code_of(frame(type="audio", seq=-1, pcm=pack_array(np.zeros(1, "<f4")))) == "bad_field"
    assert code_of(frame(type="audio", seq=2**60, pcm=pack_array(np.zeros(1, "<f4")))) == "bad_field"
    assert code_of(frame(type="flush", now=True)) == "bad_field"


@pytest.mark.parametrize(
    "data,code",
    [
        ("text frame", "bad_message"),
        (b"\xc1", "bad_message"),  # never-used msgpack byte
        (b"", "bad_message"),
        (msgpack.packb([1, 2]), "bad_message"),
        (msgpack.packb({"kind": "hello"}), "bad_message"),
        (msgpack.packb({"type": 5}), "bad_message"),
        (msgpack.packb({1: 2}), "bad_message"),  # non-string key
        (msgpack.packb({"type": "hello"}) + b"\x00", "bad_message"),  # trailing bytes
        (msgpack.packb({"type": "dance"}), "unknown_type"),
        (msgpack.packb({"type": "hello", "x": msgpack.ExtType(5, b"x")}), "bad_message"),
    ],
)
def test_undecodable_frames(data, code: str) -> None:
    assert code_of(data) == code


def test_error_table_is_complete() -> None:
    # every error carries a close code in the documented ranges
    for code, spec in ERRORS.items():
        assert code.islower() and (1000 <= spec.close_code <= 1014 or 4000 <= spec.close_code <= 4999)
    err = ProtocolError("server_full", "x")
    assert err.fatal and err.close_code == 1013
    with pytest.raises(ValueError):
        ProtocolError("no_such_code", "x")


def test_arrays_round_trip_and_validation() -> None:
    for a in (
        np.arange(6, dtype=np.int16),
        np.linspace(-1, 1, 5, dtype=np.float32),
        np.ones((8, 3), np.uint16),
    ):
        b = unpack_array(pack_array(a))
        assert b.dtype == a.dtype.newbyteorder("<") and np.array_equal(a, b)
    with pytest.raises(ArrayError, match="needs 12 bytes"):
        unpack_array({"dtype": "<f4", "shape": [3], "data": b"\0" * 8})
    with pytest.raises(ArrayError, match="cannot be sent"):
        pack_array(np.zeros(2, np.float64))


def test_server_messages_round_trip() -> None:
    codes = np.arange(6, dtype=np.uint16).reshape(2, 3)
    msg = unpack_server_message(pack({"type": "codes", "frame": 3, "codes": codes, "seq_end": None}))
    assert msg["frame"] == 3 and "seq_end" not in msg
    np.testing.assert_array_equal(msg["codes"], codes)


def test_pcm_conversions() -> None:
    x = np.array([-1.0, -0.5, 0.0, 0.5, 0.999, 1.5], np.float32)
    s16 = float_to_pcm(x, "s16")
    assert s16.dtype == np.dtype("<i2") and s16[0] == -32768 and s16[-1] == 32767
    np.testing.assert_allclose(pcm_to_float(s16)[:5], x[:5], atol=1 / 32768)
    assert float_to_pcm(x, "f32").dtype == np.dtype("<f4")


# ---- fuzz: the decoder raises nothing but ProtocolError, on bytes and on well-formed maps with odd values
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
fields = st.dictionaries(
    st.sampled_from(
        [
            "version",
            "mode",
            "sample_rate",
            "format",
            "bandwidth",
            "latency",
            "room",
            "want",
            "seq",
            "pcm",
            "frame",
            "codes",
            "client",
            "dtype",
            "shape",
            "data",
        ]
    ),
    values,
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes(data: bytes) -> None:
    try:
        parse_client_message(data)
    except ProtocolError as err:
        assert err.code in ERRORS


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["hello", "audio", "codes", "flush", "stats", "x"]), fields)
def test_fuzz_maps(kind: str, body: dict) -> None:
    try:
        data = msgpack.packb({**body, "type": kind}, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    try:
        parse_client_message(data)
    except ProtocolError as err:
        assert err.code in ERRORS


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["<i2", "<f4", "<u2", "<f8", "x"]),
    st.lists(st.integers(-3, 2**40), max_size=3),
    st.binary(max_size=64),
)
def test_fuzz_arrays(dtype: str, shape: list[int], data: bytes) -> None:
    msg = frame(type="audio", seq=0, pcm={"dtype": dtype, "shape": shape, "data": data})
    try:
        parse_client_message(msg)
    except ProtocolError as err:
        assert err.code in ("bad_audio", "bad_field")
