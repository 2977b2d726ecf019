"""Modes are one enum: the wire's strings parse to it, the worker's specs hold it, unknown modes are refused."""

from __future__ import annotations

import msgpack
import pytest

from xcodec_stream.serving.modes import WIRE_MODES, Mode
from xcodec_stream.serving.protocol import MODES, ProtocolError, parse_client_message
from xcodec_stream.serving.worker import StreamSpec


def test_wire_modes_are_the_enum_less_the_internal_relay():
    assert MODES == WIRE_MODES == ("loopback", "encode", "decode", "publish", "listen")
    assert "relay" not in MODES and Mode.RELAY.feeds_room and Mode.PUBLISH.feeds_room
    assert [m for m in Mode if m.encodes] == [Mode.LOOPBACK, Mode.ENCODE, Mode.PUBLISH]


def test_hello_mode_parses_to_the_enum_and_relay_is_not_accepted_from_clients():
    hello = parse_client_message(msgpack.packb({"type": "hello", "version": 1, "mode": "encode"}))
    assert hello.mode is Mode.ENCODE and hello.mode == "encode"
    with pytest.raises(ProtocolError, match="hello.mode must be one of"):
        parse_client_message(msgpack.packb({"type": "hello", "version": 1, "mode": "relay"}))


def test_stream_spec_takes_strings_and_refuses_unknown_modes():
    assert StreamSpec("publish", 16000, "f32", "balanced").mode is Mode.PUBLISH
    with pytest.raises(ValueError, match="bogus"):
        StreamSpec("bogus", 16000, "f32", "balanced")
