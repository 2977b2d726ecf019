"""What a session does with the codec: one enum for the wire's `hello.mode` and the worker's streams."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """A `StrEnum`: members equal their wire strings, so messages, logs and metrics labels stay strings."""

    LOOPBACK = "loopback"  # audio in, codes and/or audio out
    ENCODE = "encode"  # audio in, codes out
    DECODE = "decode"  # codes in, audio out
    PUBLISH = "publish"  # audio in, codes to a room
    LISTEN = "listen"  # a room's codes and/or audio out
    RELAY = "relay"  # internal, never on the wire: a daemon decoding a room hosted by another daemon

    @property
    def encodes(self) -> bool:
        """Its audio goes through the streaming encoder."""
        return self in (Mode.LOOPBACK, Mode.ENCODE, Mode.PUBLISH)

    @property
    def feeds_room(self) -> bool:
        """Its stream is a room's source: the room's listeners read its codes/audio."""
        return self in (Mode.PUBLISH, Mode.RELAY)


WIRE_MODES = tuple(m.value for m in Mode if m is not Mode.RELAY)
