"""The real engines (random:tiny) and the serving fake codec conform to the engine Protocols: every member is
there, and every method accepts the calls the Protocol allows (names, kinds, defaults)."""

from __future__ import annotations

import inspect
from typing import Protocol

import numpy as np
import pytest

from xcodec_stream.serving.fake_codec import FakeDecoder, FakeEncoder, FakeModel
from xcodec_stream.streaming.engine import (
    AtomicSlots,
    CodecConfig,
    CodecModel,
    DecoderEngine,
    EncoderEngine,
    WarmUp,
)


def _members(proto: type) -> dict[str, object]:
    """The Protocol's own members: name -> function (methods) or property."""
    return {
        name: value
        for name, value in vars(proto).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
    }


def mismatches(obj: object, proto: type) -> list[str]:
    """What keeps `obj` from being a `proto` (empty when it conforms)."""
    problems = []
    for name, want in _members(proto).items():
        if not hasattr(obj, name):
            problems.append(f"no {name}")
            continue
        have = getattr(obj, name)
        if isinstance(want, property):
            if callable(have):
                problems.append(f"{name} is a method, the Protocol reads a value")
            continue
        if not callable(have):
            problems.append(f"{name} is not callable")
            continue
        problems += [
            f"{name}: {p}" for p in _signature_problems(inspect.signature(want), inspect.signature(have))
        ]
    return problems


def _signature_problems(want: inspect.Signature, have: inspect.Signature) -> list[str]:
    """`have` (bound) must take every call `want` (unbound: self first) allows: positional-only parameters by
    position (any name), the others by name; a default where `want` has one; nothing else required."""
    P = inspect.Parameter
    want_params = list(want.parameters.values())[1:]
    have_params = list(have.parameters.values())
    by_position = [q for q in have_params if q.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    problems, matched = [], set()
    for i, p in enumerate(want_params):
        if p.kind is P.POSITIONAL_ONLY:
            q = by_position[i] if i < len(by_position) else None
            if q is None:
                problems.append(f"no positional parameter {i} ({p.name})")
                continue
        else:
            q = have.parameters.get(p.name)
            if q is None:
                problems.append(f"no parameter {p.name!r}")
                continue
            if q.kind is P.POSITIONAL_ONLY:
                problems.append(f"parameter {p.name!r} must be accepted by name")
        matched.add(q.name)
        if p.default is not P.empty and q.default is P.empty:
            problems.append(f"parameter {q.name!r} must have a default")
    problems += [
        f"extra parameter {q.name!r} without a default"
        for q in have_params
        if q.name not in matched and q.default is P.empty and q.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
    ]
    return problems


def test_the_check_finds_a_decoder_reset_without_lead() -> None:
    class OldFakeDecoder(FakeDecoder):
        def reset(self, slot: int) -> None:  # the fake's signature before it took `lead`
            super().reset(slot)

    assert mismatches(OldFakeDecoder(1), DecoderEngine) == ["reset: no parameter 'lead'"]

    class Incomplete(Protocol):
        def flush_slots(self, slots: list[int]) -> dict: ...

    assert mismatches(object(), Incomplete) == ["no flush_slots"]


@pytest.fixture(scope="module")
def real(tiny_model):
    return tiny_model, tiny_model.streaming_encoder(batch_size=2), tiny_model.streaming_decoder(batch_size=2)


def _fake():
    model = FakeModel()
    return model, model.streaming_encoder(batch_size=2), model.streaming_decoder(batch_size=2)


@pytest.mark.parametrize("which", ["real", "fake"])
def test_engines_conform(which: str, request) -> None:
    model, enc, dec = request.getfixturevalue("real") if which == "real" else _fake()
    for obj, proto in [
        (model, CodecModel),
        (model.config, CodecConfig),
        (enc, EncoderEngine),
        (dec, DecoderEngine),
    ]:
        assert isinstance(obj, proto), proto.__name__
        assert mismatches(obj, proto) == [], proto.__name__
    if which == "real":  # the optional capabilities the worker uses where present
        for engine in (enc, dec):
            assert isinstance(engine, AtomicSlots) and mismatches(engine, AtomicSlots) == []
            assert isinstance(engine, WarmUp) and mismatches(engine, WarmUp) == []


@pytest.mark.parametrize("which", ["real", "fake"])
def test_a_decoder_takes_the_lead_its_encoder_asks_for(which: str, request) -> None:
    """What the worker does for a decoder fed by an encoder (serving.worker.slots.reset_decoder)."""
    _, enc, dec = request.getfixturevalue("real") if which == "real" else _fake()
    lead = enc.lead_for(dec.step_frames)
    assert isinstance(lead, int) and 0 <= lead < dec.step_frames
    dec.reset(1, lead=lead)
    enc.reset(1)
    enc.set_bandwidth(1, None)
    codes = np.asarray(enc.flush_slots([1])[1])
    assert codes.ndim == 2
    with pytest.raises(ValueError):
        dec.reset(1, lead=dec.step_frames)  # out of range for both


def _typed() -> None:
    """For a static checker (mypy/pyright, where installed): the fake codec is a CodecModel and its engines
    are engines. Never called."""
    model: CodecModel = FakeModel()
    enc: EncoderEngine = FakeEncoder(1)
    dec: DecoderEngine = FakeDecoder(1)
    del model, enc, dec
