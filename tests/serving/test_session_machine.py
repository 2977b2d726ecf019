"""The session's protocol state machine alone: events in, actions and outbox messages out. No sockets, no
event loop, no codec (the worker's and the rooms' answers are made up here)."""

from __future__ import annotations

from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
from serving_helpers import CODEC, INFO

from xcodec_stream.serving import session_core, session_events
from xcodec_stream.serving.arrays import pack_array
from xcodec_stream.serving.config import ServerConfig
from xcodec_stream.serving.modes import Mode
from xcodec_stream.serving.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_ROOM_BUSY,
    CLOSE_ROOM_ENDED,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED_DATA,
    Hello,
    ProtocolError,
)
from xcodec_stream.serving.rooms import Room
from xcodec_stream.serving.session_core import ServerFigures, SessionMachine
from xcodec_stream.serving.session_events import (
    AttachListener,
    BroadcastCodes,
    ClaimRoom,
    Close,
    Closed,
    CloseStream,
    EndRoom,
    Failed,
    FlushStream,
    JoinRoom,
    LeaveRoom,
    ListenerAttached,
    OpenRoom,
    OpenStream,
    PushAudio,
    PushCodes,
    Received,
    Result,
    RoomClaimed,
    RoomData,
    RoomEnded,
    RoomJoined,
    RoomOpened,
    SendRoomAudio,
    Shutdown,
    StartStats,
    StatsDue,
    StepFailed,
    StopStats,
    StreamOpened,
    UnclaimRoom,
)
from xcodec_stream.serving.worker import StepResult

SID = 7


def new(clock=None, figures=ServerFigures, **options) -> SessionMachine:
    config = ServerConfig(**options).validate()
    kw = {"clock": clock} if clock is not None else {}
    return SessionMachine(SID, config=config, codec=CODEC, figures=figures, **kw)


def frame(**msg) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def hello(**fields) -> bytes:
    return frame(type="hello", version=1, **fields)


def audio(seq: int, pcm: np.ndarray) -> bytes:
    return frame(type="audio", seq=seq, pcm=pack_array(pcm))


def sent(m: SessionMachine) -> list[dict]:
    """Everything in the outbox, as the writer would take it."""
    out = []
    while (msg := m.out.pop()) is not None:
        out.append(msg)
    return out


def error_of(msgs: list[dict]) -> tuple[str, bool]:
    (err,) = [msg for msg in msgs if msg["type"] == "error"]
    return err["code"], err["fatal"]


def opened(mode: str = "loopback", **fields) -> SessionMachine:
    """A session past `ready` (encode/loopback/decode), its outbox emptied."""
    m = new(**fields.pop("options", {}))
    (action,) = m.feed(Received(hello(mode=mode, **fields)))
    assert isinstance(action, OpenStream)
    assert m.feed(StreamOpened(INFO)) == []
    assert [msg["type"] for msg in sent(m)] == ["ready"] and m.state == "ready"
    return m


def room(params: dict | None = None) -> Room:
    p = {
        "n_q": 2,
        "bandwidth": 1.0,
        "frame_rate": 50.0,
        "frame_size": 320,
        "codebook_size": 1024,
        "latency": "balanced",
        "encoder_latency_ms": 60.0,
        "decoder_latency_ms": 40.0,
        "lookahead_frames": 2,
        "publisher_sample_rate": 16000,
    }
    return Room("r", SimpleNamespace(sid=3), params or p, next_frame=12)


# ---------------------------------------------------------------------------------------------- handshake


def test_loopback_hello_opens_a_stream_then_ready() -> None:
    m = new()
    (action,) = m.feed(Received(hello(mode="loopback", sample_rate=48000, format="s16", bandwidth=1)))
    spec = action.spec
    assert (spec.mode, spec.sample_rate, spec.fmt, spec.preset, spec.bandwidth, spec.want_audio) == (
        Mode.LOOPBACK, 48000, "s16", "balanced", 1.0, True,
    )  # fmt: skip
    assert m.state == "opening" and sent(m) == []
    assert m.feed(StreamOpened(INFO)) == []
    (ready,) = sent(m)
    assert ready["type"] == "ready" and ready["session"] == SID and ready["mode"] == "loopback"
    assert (ready["sample_rate"], ready["n_q"], ready["bandwidth"], ready["want"]) == (
        48000,
        4,
        1.0,
        ["audio"],
    )
    assert ready["algorithmic_latency_ms"] == 60.0 and ready["limits"]["resume_grace_s"] == 0.0  # no token


def test_resume_token_and_node_go_into_ready() -> None:
    m = new()
    m.token, m.node = "tok", "daemon-a"
    m.feed(Received(hello(mode="encode")))
    m.feed(StreamOpened(INFO))
    (ready,) = sent(m)
    assert ready["resume_token"] == "tok" and ready["node"] == "daemon-a" and ready["want"] == ["codes"]
    assert ready["limits"]["resume_grace_s"] == 10.0


@pytest.mark.parametrize(
    ("data", "code", "close"),
    [
        (b"\xc1", "bad_message", CLOSE_INVALID_PAYLOAD),  # not msgpack
        ("hello", "bad_message", CLOSE_UNSUPPORTED_DATA),  # a text frame
        (frame(type="audio", seq=0, pcm=pack_array(np.zeros(320, "<f4"))), "bad_state", CLOSE_PROTOCOL_ERROR),
        (hello(mode="loopback", sample_rate=100), "bad_field", CLOSE_PROTOCOL_ERROR),  # wrong sample rate
        (hello(mode="loopback", latency="sloppy"), "bad_field", CLOSE_PROTOCOL_ERROR),
        (hello(mode="loopback", bandwidth=3.0), "bad_field", CLOSE_PROTOCOL_ERROR),  # not offered
        (hello(mode="publish", room="r", want=["audio"]), "bad_field", CLOSE_PROTOCOL_ERROR),
        (hello(resume="tok"), "bad_state", CLOSE_PROTOCOL_ERROR),  # resumes are taken before a Session
        (frame(type="nonsense"), "unknown_type", CLOSE_PROTOCOL_ERROR),
    ],
)
def test_a_bad_first_message_is_fatal(data, code: str, close: int) -> None:
    m = new()
    actions = m.feed(Received(data))
    assert actions == [Close(close, code)]
    assert error_of(sent(m)) == (code, True)
    assert (m.close_code, m.close_reason) == (close, code)
    # nothing more is read from a closing session
    assert m.feed(Received(hello(mode="loopback"))) == [] and sent(m) == []


def test_hello_twice_is_refused_but_not_fatal() -> None:
    m = opened()
    assert m.feed(Received(hello(mode="loopback"))) == []
    assert error_of(sent(m)) == ("bad_state", False) and m.close_code is None


def test_open_failures_are_fatal() -> None:
    m = new()
    m.feed(Received(hello(mode="encode")))
    actions = m.feed(StepFailed(ProtocolError("server_full", "no free slot")))
    assert actions == [Close(CLOSE_TRY_AGAIN, "server_full")] and error_of(sent(m)) == ("server_full", True)
    assert m.feed(Closed()) == [CloseStream()]  # the slot the open may have taken goes back


# ---------------------------------------------------------------------------------------------- input


def test_audio_goes_to_the_worker_in_order() -> None:
    m = opened()
    pcm = np.zeros(320, "<f4")
    (push,) = m.feed(Received(audio(0, pcm)))
    assert isinstance(push, PushAudio) and push.seq == 0 and push.pcm.dtype.str == "<f4"
    assert m.received == 320 and m.lag_ms == 20.0 and m.busy
    assert m.feed(Received(audio(2, pcm))) == []  # seq 1 expected
    assert error_of(sent(m)) == ("bad_seq", False)
    assert isinstance(m.feed(Received(audio(1, pcm)))[0], PushAudio)


@pytest.mark.parametrize(
    ("pcm", "code"),
    [
        (np.array([0.0, np.nan], "<f4"), "bad_audio"),  # NaN
        (np.array([0.0, np.inf], "<f4"), "bad_audio"),
        (np.zeros(320, "<i2"), "bad_audio"),  # s16 samples in an f32 session
        (np.zeros(16000 * 3, "<f4"), "too_large"),  # 3 s > max_chunk_ms
    ],
)
def test_bad_audio_is_refused_and_the_session_goes_on(pcm: np.ndarray, code: str) -> None:
    m = opened()
    assert m.feed(Received(audio(0, pcm))) == []
    assert error_of(sent(m)) == (code, False) and m.close_code is None and m.received == 0
    assert isinstance(m.feed(Received(audio(0, np.zeros(320, "<f4"))))[0], PushAudio)


def test_backlog_over_the_limit_is_rate_limited_with_the_seq_to_resend() -> None:
    m = opened(options={"max_backlog_ms": 100.0})
    pcm = np.zeros(800, "<f4")  # 50 ms
    assert len(m.feed(Received(audio(0, pcm)))) == 1
    assert len(m.feed(Received(audio(1, pcm)))) == 1
    assert m.feed(Received(audio(2, pcm))) == []
    (err,) = sent(m)
    assert err["code"] == "rate_limited" and "resend seq 2" in err["message"] and not err["fatal"]
    m.feed(Result(StepResult(seq_end=1, consumed=1600)))  # the worker caught up: taken again
    assert isinstance(m.feed(Received(audio(2, pcm)))[0], PushAudio)


def test_message_rate_limit_then_flood_close() -> None:
    t = [0.0]
    m = new(clock=lambda: t[0], max_messages_per_second=10.0, message_burst=2, flood_close_after=3)
    m.feed(Received(hello(mode="encode")))
    m.feed(StreamOpened(INFO))
    sent(m)
    stats = frame(type="stats")
    m.feed(Received(stats))  # the burst: hello and this one
    assert [msg["type"] for msg in sent(m)] == ["stats"]
    assert m.feed(Received(stats)) == [] and error_of(sent(m)) == ("rate_limited", False)
    t[0] = 0.1  # one token back
    m.feed(Received(stats))
    assert [msg["type"] for msg in sent(m)] == ["stats"] and m.rejected_in_a_row == 0
    for _ in range(2):
        m.feed(Received(stats))
    assert m.feed(Received(stats)) == [Close(CLOSE_POLICY, "rate_limited")]


def test_decode_codes_checks() -> None:
    m = opened("decode", bandwidth=1.0)  # n_q from the bandwidth: INFO says 4 regardless
    good = np.zeros((4, 5), "<u2")
    assert m.feed(Received(frame(type="codes", frame=0, codes=pack_array(np.zeros((2, 5), "<u2"))))) == []
    assert error_of(sent(m)) == ("bad_codes", False)
    assert m.feed(Received(frame(type="codes", frame=0, codes=pack_array(good + 1024)))) == []
    assert error_of(sent(m)) == ("bad_codes", False)
    (push,) = m.feed(Received(frame(type="codes", frame=0, codes=pack_array(good))))
    assert isinstance(push, PushCodes) and push.frame == 0 and m.next_seq == 5 and m.lag_ms == 100.0
    assert m.feed(Received(audio(0, np.zeros(320, "<f4")))) == []
    assert error_of(sent(m)) == ("bad_state", False)


def test_unknown_type_after_ready_is_an_error_not_a_close() -> None:
    m = opened()
    assert m.feed(Received(frame(type="nonsense"))) == []
    assert error_of(sent(m)) == ("unknown_type", False) and m.close_code is None


def test_control_messages_piling_up_close_the_session() -> None:
    m = opened(options={"max_control_queue": 3})
    stats = frame(type="stats")
    for _ in range(3):
        assert m.feed(Received(stats)) == []
    assert m.feed(Received(stats)) == [Close(CLOSE_POLICY, "too_slow")]
    assert [msg["type"] for msg in sent(m)] == ["stats"] * 3 + ["error"]


# ---------------------------------------------------------------------------------------------- output


def test_results_become_messages_acks_and_done() -> None:
    m = opened("loopback", want=["audio", "codes"])
    m.feed(Received(audio(0, np.zeros(1600, "<f4"))))
    codes = np.zeros((4, 3), "<u2")
    pcm = np.zeros(960, "<f4")
    assert (
        m.feed(Result(StepResult(seq_end=0, consumed=1600, frame=0, codes=codes, sample=0, audio=pcm))) == []
    )
    got = sent(m)
    assert [(msg["type"], msg["seq_end"]) for msg in got] == [("codes", 0), ("audio", 0)]
    assert got[0]["dropped"] == 0 and m.lag_ms == 0 and (m.frames_out, m.samples_out) == (3, 960)
    m.feed(Received(audio(1, np.zeros(320, "<f4"))))
    m.feed(Result(StepResult(seq_end=1, consumed=320)))  # input taken, no step completed: an ack
    assert sent(m) == [{"type": "ack", "seq_end": 1}]
    assert m.feed(Received(frame(type="flush"))) == [FlushStream()] and m.state == "flushing"
    assert m.feed(Received(frame(type="flush"))) == []
    assert error_of(sent(m)) == ("bad_state", False)
    m.feed(Result(StepResult(done={"samples_out": 960, "frames_out": 3})))
    assert sent(m) == [{"type": "done", "samples_out": 960, "frames_out": 3, "dropped": 0}]
    assert m.state == "done" and m.drained
    assert m.feed(Received(audio(2, np.zeros(320, "<f4")))) == []
    assert error_of(sent(m)) == ("bad_state", False)


def test_a_failed_codec_step_is_fatal() -> None:
    m = opened()
    assert m.feed(Result(StepResult(error="server_busy"))) == [Close(CLOSE_TRY_AGAIN, "server_busy")]
    assert error_of(sent(m)) == ("server_busy", True)


def test_stats_timer_and_figures() -> None:
    m = new(figures=lambda: ServerFigures(worker_tick_ms=1.23456, worker_batch=5, sessions=9))
    m.feed(Received(hello(mode="encode", stats_interval_ms=500)))
    assert m.feed(StreamOpened(INFO)) == [StartStats(500)]
    sent(m)
    assert m.feed(StatsDue()) == []
    (stats,) = sent(m)
    assert stats["type"] == "stats" and stats["state"] == "ready"
    assert (stats["worker_tick_ms"], stats["worker_batch"], stats["sessions"]) == (1.235, 5, 9)
    assert m.feed(Closed()) == [StopStats(), CloseStream()] and m.state == "closed"
    assert m.feed(Closed()) == []  # idempotent


# ---------------------------------------------------------------------------------------------- rooms


def test_publish_claims_opens_and_feeds_its_room() -> None:
    m = new()
    assert m.feed(Received(hello(mode="publish", room="r", bandwidth=1.0))) == [ClaimRoom("r")]
    (open_stream,) = m.feed(RoomClaimed())
    assert isinstance(open_stream, OpenStream) and open_stream.spec.mode == Mode.PUBLISH
    (open_room,) = m.feed(StreamOpened(INFO))
    assert isinstance(open_room, OpenRoom) and open_room.name == "r"
    assert open_room.params["bandwidth"] == 1.0 and open_room.params["n_q"] == 4
    r = room()
    assert m.feed(RoomOpened(r)) == [] and [msg["type"] for msg in sent(m)] == ["ready"]
    codes = np.zeros((4, 2), "<u2")
    listeners = {8: (0, np.zeros(640, "<f4"))}
    actions = m.feed(Result(StepResult(seq_end=0, frame=0, codes=codes, listeners=listeners)))
    assert [type(a) for a in actions] == [BroadcastCodes, SendRoomAudio]
    assert actions[0].room is r and actions[0].frame_ms == 20.0 and actions[1].listeners is listeners
    assert sent(m) == [{"type": "ack", "seq_end": 0}]  # a publisher wants no codes of its own by default
    assert m.feed(Result(StepResult(done={"frames_out": 2}))) == [EndRoom("r", "publisher_done")]
    assert m.feed(Closed()) == [CloseStream(), EndRoom("r", "publisher_left")]


def test_publish_into_a_busy_room() -> None:
    m = new()
    m.feed(Received(hello(mode="publish", room="r")))
    actions = m.feed(StepFailed(ProtocolError("room_busy", "taken")))
    assert actions == [Close(CLOSE_ROOM_BUSY, "room_busy")] and error_of(sent(m)) == ("room_busy", True)
    assert m.feed(Closed()) == [CloseStream()]  # the name was never ours: nothing to release


def test_publisher_whose_stream_did_not_open_releases_the_name() -> None:
    m = new()
    m.feed(Received(hello(mode="publish", room="r")))
    m.feed(RoomClaimed())
    m.feed(StepFailed(ProtocolError("server_full", "full")))
    assert m.feed(Closed()) == [CloseStream(), UnclaimRoom("r")]


def test_listener_joins_attaches_and_gets_the_room_message_first() -> None:
    m = new()
    assert m.feed(Received(hello(mode="listen", room="r", sample_rate=48000, format="s16"))) == [
        JoinRoom("r")
    ]
    r = room()
    assert m.feed(RoomJoined(r)) == [AttachListener(3, 48000, "s16")]
    assert m.feed(ListenerAttached()) == []
    ready, room_msg = sent(m)
    assert ready["type"] == "ready" and ready["n_q"] == 2 and ready["bandwidth"] == 1.0
    assert ready["algorithmic_latency_ms"] == 100.0  # encoder + decoder: it wants audio
    assert room_msg["type"] == "room" and room_msg["frame"] == 12
    assert m.feed(RoomData({"type": "audio", "sample": 0, "pcm": np.zeros(960, "<i2")}, 20.0)) == []
    assert [msg["type"] for msg in sent(m)] == ["audio"] and m.samples_out == 960
    assert m.feed(Received(frame(type="flush"))) == []
    assert error_of(sent(m)) == ("bad_state", False)
    assert m.feed(RoomEnded("publisher_done")) == [Close(CLOSE_ROOM_ENDED, "publisher_done")]
    (done,) = sent(m)
    assert done == {
        "type": "done",
        "reason": "publisher_done",
        "samples_out": 960,
        "frames_out": 0,
        "dropped": 0,
    }
    assert LeaveRoom("r") not in m.feed(Closed())  # the room is gone already


def test_listener_without_a_decoder_slot_leaves_the_room() -> None:
    m = new()
    m.feed(Received(hello(mode="listen", room="r")))
    m.feed(RoomJoined(room()))
    actions = m.feed(StepFailed(ProtocolError("server_full", "no free decoder slot")))
    assert actions == [LeaveRoom("r"), Close(CLOSE_TRY_AGAIN, "server_full")]


def test_codes_only_listener_needs_no_decoder() -> None:
    m = new()
    m.feed(Received(hello(mode="listen", room="r", want=["codes"])))
    assert m.feed(RoomJoined(room())) == []
    ready, _ = sent(m)
    assert ready["algorithmic_latency_ms"] == 60.0
    assert m.feed(Closed()) == [LeaveRoom("r")]


def test_room_not_found() -> None:
    m = new()
    m.feed(Received(hello(mode="listen", room="r")))
    m.feed(StepFailed(ProtocolError("room_not_found", "no publisher")))
    assert m.close_code == 4004 and error_of(sent(m)) == ("room_not_found", True)


# ---------------------------------------------------------------------------------------------- drain, resume


def test_shutdown_flushes_a_ready_stream_and_marks_its_done() -> None:
    m = opened()
    assert m.feed(Shutdown()) == [FlushStream()] and m.state == "flushing"
    m.feed(Result(StepResult(done={"samples_out": 0})))
    assert sent(m)[-1]["reason"] == "shutting_down"


def test_shutdown_during_the_handshake_is_fatal() -> None:
    m = new()
    m.feed(Received(hello(mode="encode")))
    assert m.feed(Shutdown()) == [Close(CLOSE_GOING_AWAY, "shutting_down")]
    assert m.feed(StreamOpened(INFO)) == [] and m.state == "opening"  # no ready for a closing session


def test_shutdown_ends_a_listener_without_a_close_of_its_own() -> None:
    m = new()
    m.feed(Received(hello(mode="listen", room="r", want=["codes"])))
    m.feed(RoomJoined(room()))
    sent(m)
    assert m.feed(Shutdown()) == []
    assert m.feed(RoomEnded("publisher_left")) == []  # the server closes everyone with 1001 itself
    assert sent(m)[0]["reason"] == "shutting_down" and m.drained


def test_external_failures() -> None:
    m = opened()
    assert m.feed(Failed(ProtocolError("idle_timeout", "no message"))) == [Close(4000, "idle_timeout")]
    assert m.feed(Failed(ProtocolError("internal", "again"))) == []  # the first close stands
    assert m.close_reason == "idle_timeout"


def test_resume_checks_and_front() -> None:
    m = new()
    with pytest.raises(ProtocolError, match="resume_failed"):
        m.check_resume(Hello(1, None, resume="tok"))  # not even ready
    m.feed(Received(hello(mode="loopback")))
    m.feed(StreamOpened(INFO))
    m.feed(Received(audio(0, np.zeros(1600, "<f4"))))
    m.feed(Result(StepResult(seq_end=0, consumed=1600, sample=0, audio=np.arange(1600, dtype="<f4"))))
    for msg in sent(m):
        m.sending(msg)  # the writer hands them to the socket
    m.feed(Received(frame(type="ack", sample=600)))
    with pytest.raises(ProtocolError, match="resume_failed"):
        m.check_resume(Hello(1, None, resume="tok", sample=1601))  # more than was ever sent
    m.check_resume(Hello(1, None, resume="tok", sample=1000))
    m.attached = False
    m.feed(Received(frame(type="stats")))  # nobody to read it while detached
    assert len(m.out) == 0
    (resumed, _), (replay, ms) = m.resume_front(Hello(1, None, resume="tok", sample=1000))
    assert resumed["type"] == "resumed" and resumed["next_seq"] == 1 and resumed["sample"] == 1000
    assert replay["sample"] == 1000 and replay["pcm"][0] == 1000 and ms == pytest.approx(600 / 16)


def test_output_is_pinned_while_detached() -> None:
    m = opened(options={"max_output_queue_ms": 50.0})
    m.attached = False
    m.feed(Received(audio(0, np.zeros(3200, "<f4"))))
    for k in range(3):  # 3 x 100 ms of audio, twice the bound: kept for the returning client
        m.feed(Result(StepResult(seq_end=0, sample=1600 * k, audio=np.zeros(1600, "<f4"))))
    assert m.out.dropped == 0 and m.out.pinned_ms == 300.0


# ---------------------------------------------------------------------------------------------- the machine


def test_the_machine_needs_no_event_loop_and_knows_its_events() -> None:
    for module in (session_core, session_events):
        assert not {"asyncio", "websockets"} & set(vars(module))
    with pytest.raises(TypeError):
        new().feed(object())  # type: ignore[arg-type]
