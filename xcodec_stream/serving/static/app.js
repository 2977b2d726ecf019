// xcodec-stream web client: captures the microphone, streams it over the WebSocket protocol, plays back the result.
"use strict";

(() => {
  const MP = window.MessagePack;
  const $ = (id) => document.getElementById(id);

  const PROTOCOL_VERSION = 1;
  const WS_PATH = "/"; // the daemon upgrades any path that is not an HTTP route
  const BLOCK_MS = 20; // capture block sent per message
  const MAX_BUFFERED_BYTES = 1 << 20; // a stalled socket drops microphone blocks instead of queueing forever
  const WAVE_SECONDS = 3;
  // Jitter buffer target: the spread of the audio's arrival delay over the last few seconds, plus a margin,
  // never under the chosen minimum. A stall raises it; it comes back down once the stall leaves the window.
  const JITTER_WINDOW_MS = 3000;
  const JITTER_MARGIN_MS = 20;
  const MAX_TARGET_MS = 1000;
  const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  let S = null; // the running session, see newSession()
  let serverInfo = null;
  const ui = {};

  // ---------- wire helpers ----------

  function packPcm(f32, format) {
    if (format === "f32") {
      return { dtype: "<f4", shape: [f32.length], data: new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength) };
    }
    const s16 = new Int16Array(f32.length);
    for (let i = 0; i < f32.length; i++) {
      s16[i] = Math.max(-32768, Math.min(32767, Math.round(f32[i] * 32768)));
    }
    return { dtype: "<i2", shape: [s16.length], data: new Uint8Array(s16.buffer) };
  }

  function unpackArray(a) {
    // msgpack hands back a view into the message: copy so the typed array is aligned.
    const bytes = a.data.slice();
    if (a.dtype === "<f4") return new Float32Array(bytes.buffer);
    if (a.dtype === "<i2") return new Int16Array(bytes.buffer);
    if (a.dtype === "<u2") return new Uint16Array(bytes.buffer);
    throw new Error(`unknown dtype ${a.dtype}`);
  }

  function pcmToFloat(a) {
    const x = unpackArray(a);
    if (x instanceof Float32Array) return x;
    const f = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) f[i] = x[i] / 32768;
    return f;
  }

  function toBase64(f32) {
    const u8 = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
    let s = "";
    for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
    return btoa(s);
  }

  function concat(chunks) {
    let n = 0;
    for (const c of chunks) n += c.length;
    const out = new Float32Array(n);
    let o = 0;
    for (const c of chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }

  function median(xs) {
    if (!xs.length) return null;
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }

  // ---------- UI ----------

  function log(msg) {
    const line = `${new Date().toISOString().slice(11, 23)} ${msg}\n`;
    ui.log.textContent = (ui.log.textContent + line).slice(-6000);
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function showError(msg) {
    const div = document.createElement("div");
    div.textContent = msg;
    ui.errors.appendChild(div);
    if (S) S.errors.push(msg);
    console.warn(`xcodec-stream: ${msg}`);
    log(`error: ${msg}`);
  }

  function setState(name, cls) {
    ui.state.textContent = name;
    ui.state.className = `state ${cls || name}`;
  }

  function fillSelect(sel, values, fmt, preferred) {
    // The first entry leaves the field out of `hello`: the server's default applies.
    const keep = sel.value;
    sel.innerHTML = "";
    for (const v of ["", ...values]) {
      const o = document.createElement("option");
      o.value = String(v);
      o.textContent = v === "" ? "server default" : fmt(v);
      sel.appendChild(o);
    }
    const want = [keep, preferred].find((v) => v != null && v !== "" && values.map(String).includes(String(v)));
    sel.value = want != null ? String(want) : "";
  }

  function applyServerInfo(info) {
    // /healthz (or `ready`) lists the bandwidths and latency presets when the server knows them.
    serverInfo = { ...(serverInfo || {}), ...(info || {}) };
    const presets = serverInfo.latency_presets || [];
    fillSelect(ui.bandwidth, serverInfo.bandwidths || [], (v) => `${v} kbps`, null);
    fillSelect(ui.latency, presets, (v) => (v === serverInfo.default_latency ? `${v} (default)` : v), null);
    const bits = [];
    if (serverInfo.model) bits.push(`model ${serverInfo.model}`);
    if (serverInfo.sessions != null) bits.push(`${serverInfo.sessions} session(s)`);
    if (serverInfo.status) bits.push(serverInfo.status);
    ui.server.textContent = bits.join(" · ") || "server up";
  }

  async function loadServerInfo() {
    try {
      const r = await fetch("/healthz", { cache: "no-store" });
      applyServerInfo(await r.json());
    } catch (e) {
      applyServerInfo(null);
      ui.server.textContent = `no /healthz (${e.message})`;
    }
  }

  function updateModeUi() {
    ui.roomLabel.style.display = ui.mode.value === "loopback" ? "none" : "";
    // A listener gets the room's bandwidth and preset (from the publisher): nothing to choose.
    ui.bandwidth.disabled = ui.latency.disabled = ui.mode.value === "listen";
  }

  // ---------- waveform display ----------

  class Wave {
    constructor(canvas) {
      this.canvas = canvas;
      this.cols = canvas.width;
      this.min = new Float32Array(this.cols);
      this.max = new Float32Array(this.cols);
      this.head = 0;
      this.acc = 0;
      this.lo = 0;
      this.hi = 0;
      this.perCol = 1;
    }
    setRate(rate) {
      this.perCol = Math.max(1, Math.round((rate * WAVE_SECONDS) / this.cols));
    }
    push(x) {
      for (let i = 0; i < x.length; i++) {
        const v = x[i];
        if (v < this.lo) this.lo = v;
        if (v > this.hi) this.hi = v;
        if (++this.acc === this.perCol) {
          this.min[this.head] = this.lo;
          this.max[this.head] = this.hi;
          this.head = (this.head + 1) % this.cols;
          this.acc = this.lo = this.hi = 0;
        }
      }
    }
    draw() {
      const g = this.canvas.getContext("2d");
      const h = this.canvas.height;
      g.clearRect(0, 0, this.cols, h);
      g.fillStyle = "#2363c9";
      for (let c = 0; c < this.cols; c++) {
        const k = (this.head + c) % this.cols;
        const y0 = (1 - Math.min(1, this.max[k])) * (h / 2);
        const y1 = (1 - Math.max(-1, this.min[k])) * (h / 2);
        g.fillRect(c, y0, 1, Math.max(1, y1 - y0));
      }
    }
  }

  function levelPercent(rms) {
    // dBFS mapped from -60..0 onto 0..100 %.
    const db = 20 * Math.log10(Math.max(rms, 1e-6));
    return Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  }

  // ---------- session ----------

  function newSession(opts) {
    let resolveStopped;
    const stopped = new Promise((r) => (resolveStopped = r));
    return {
      stopped,
      resolveStopped,
      opts,
      ws: null,
      ctx: null,
      stream: null,
      source: null,
      capture: null,
      player: null,
      ready: null,
      room: null,
      seq: 0,
      sentSamples: 0,
      sendLog: [], // [end sample (exclusive), time sent] per block, for the round trip
      sentChunks: [], // kept only with opts.record (tests): a long session must not grow without bound
      recvChunks: [], // {sample, pcm}, likewise
      recvSamples: 0, // end of the received audio on the `sample` axis
      recvCount: 0,
      recvStart: null,
      rtts: [],
      delays: [], // [arrival time, arrival time - media time] of received audio, for the jitter buffer
      targetMs: opts.jitterMs,
      rttLast: null,
      codeLog: [], // [time, bits] for the measured bitrate
      codeFrames: 0,
      serverDropped: 0, // gaps in the received audio
      serverDroppedSamples: 0,
      serverStats: null,
      sendDropped: 0, // capture blocks not sent (stalled socket, resync)
      rejected: 0, // chunks the server did not take
      resyncing: false,
      blockSize: 0,
      player_: { queuedMs: 0, targetMs: opts.jitterMs, underruns: 0, droppedMs: 0, played: 0, rms: 0 },
      inRms: 0,
      errors: [],
      waiters: {}, // message type -> resolve()
      closed: false,
      startedAt: performance.now(),
    };
  }

  function waitFor(type, ms) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timed out waiting for ${type}`)), ms);
      S.waiters[type] = (v) => {
        clearTimeout(t);
        resolve(v);
      };
    });
  }

  function resolveWaiter(s, type, v) {
    const w = s.waiters[type];
    if (w) {
      delete s.waiters[type];
      w(v);
    }
  }

  function send(obj) {
    S.ws.send(MP.encode(obj));
  }

  function onCaptureBlock(e) {
    const s = S;
    if (!s || !s.ready || s.closed || s.flushing) return; // nothing is sent before `ready` or after `flush`
    const pcm = e.data.pcm;
    s.inRms = Math.sqrt(pcm.reduce((a, v) => a + v * v, 0) / pcm.length);
    ui.inWave.push(pcm);
    // Not sent (a hole in the audio, not in `seq`): the socket is stalled, or we wait to learn the server's seq.
    if (s.ws.bufferedAmount > MAX_BUFFERED_BYTES || s.resyncing) {
      s.sendDropped++;
      return;
    }
    const wire = packPcm(pcm, s.opts.format);
    send({ type: "audio", seq: s.seq++, pcm: wire });
    // Keep what was actually sent (after s16 rounding), so a test can feed the same input elsewhere.
    if (s.opts.record) s.sentChunks.push(s.opts.format === "f32" ? pcm : pcmToFloat(wire));
    s.sentSamples += pcm.length;
    if (s.opts.mode === "loopback") s.sendLog.push([s.sentSamples, performance.now()]); // for the round trip
  }

  function onAudio(s, m) {
    const pcm = pcmToFloat(m.pcm);
    const sample = typeof m.sample === "number" ? m.sample : s.recvSamples;
    if (s.recvStart === null) s.recvStart = sample;
    // The server drops old audio for a client that reads too slowly: a jump in `sample` is the gap.
    if (s.recvCount && sample > s.recvSamples) {
      s.serverDropped++;
      s.serverDroppedSamples += sample - s.recvSamples;
    }
    if (s.opts.record) s.recvChunks.push({ sample, pcm });
    s.recvSamples = sample + pcm.length;
    s.recvCount += pcm.length;
    ui.outWave.push(pcm);
    if (s.player) {
      adaptTarget(s, sample);
      const copy = pcm.slice(); // the received log keeps its own copy; this one is transferred
      s.player.port.postMessage({ type: "pcm", pcm: copy }, [copy.buffer]);
    }
    // After `flush` the tail comes back without waiting for lookahead: not a steady-state round trip.
    if (s.opts.mode === "loopback" && s.sendLog.length && !s.flushing) {
      // Output sample k is the reconstruction of input sample k: the round trip of this message is the time
      // since the block holding its last input sample was sent (algorithmic latency + compute + network).
      const end = sample + pcm.length;
      const now = performance.now();
      while (s.sendLog.length > 1 && s.sendLog[0][0] < end) s.sendLog.shift();
      if (s.sendLog[0][0] >= end) {
        s.rttLast = now - s.sendLog[0][1];
        s.rtts.push(s.rttLast);
        if (s.rtts.length > 500) s.rtts.shift();
      }
    }
  }

  function adaptTarget(s, sample) {
    // Arrival delay of this message's first sample, up to a constant: its spread is the jitter to absorb.
    const now = performance.now();
    s.delays.push([now, now - (1000 * sample) / s.ctx.sampleRate]);
    while (now - s.delays[0][0] > JITTER_WINDOW_MS) s.delays.shift();
    let lo = Infinity;
    let hi = -Infinity;
    for (const [, d] of s.delays) {
      lo = Math.min(lo, d);
      hi = Math.max(hi, d);
    }
    const want = Math.min(MAX_TARGET_MS, Math.max(s.opts.jitterMs, hi - lo + JITTER_MARGIN_MS));
    if (Math.abs(want - s.targetMs) >= 5) {
      s.targetMs = want;
      s.player.port.postMessage({ type: "target", ms: want });
    }
  }

  function onCodes(s, m) {
    const shape = m.codes.shape; // (n_q, frames)
    const frames = shape.length === 2 ? shape[1] : 1;
    const nq = shape[0];
    const size = (s.ready && s.ready.codebook_size) || 1024;
    s.codeFrames += frames;
    s.codeLog.push([performance.now(), nq * frames * Math.ceil(Math.log2(size))]);
  }

  function onMessage(s, data) {
    let m;
    try {
      m = MP.decode(new Uint8Array(data));
    } catch (e) {
      showError(`undecodable message: ${e.message}`);
      return;
    }
    switch (m.type) {
      case "ready":
        s.ready = m;
        if (m.bandwidths && !(serverInfo && serverInfo.bandwidths)) applyServerInfo({ bandwidths: m.bandwidths });
        log(`ready: session ${m.session}, algorithmic latency ${m.algorithmic_latency_ms} ms, n_q ${m.n_q}`);
        resolveWaiter(s, "ready", m);
        break;
      case "audio":
        onAudio(s, m);
        break;
      case "codes":
        onCodes(s, m);
        break;
      case "room":
        s.room = m;
        log(`room ${m.room}: ${m.bandwidth} kbps (n_q ${m.n_q}), preset ${m.latency}, ` +
          `publisher at ${m.publisher_sample_rate} Hz, joining at frame ${m.frame}`);
        break;
      case "done":
        log(`done${m.reason ? ` (${m.reason})` : ""}`);
        s.doneMsg = m;
        if (s.waiters.done) resolveWaiter(s, "done", m);
        else if (!s.flushing) stop(); // a room's publisher ended: play out what is buffered, then close
        break;
      case "stats":
        s.serverStats = m;
        if (s.resyncing) {
          // Everything after the first rejected chunk was rejected too, so `received` is final: every block
          // has the same size, so the server expects seq = received / blockSize.
          s.seq = Math.round(m.received / s.blockSize);
          s.sentSamples = m.received;
          s.sendLog = [];
          s.resyncing = false;
          log(`resynced at seq ${s.seq}`);
        }
        break;
      case "ack":
        break;
      case "error":
        if (!m.fatal && (m.code === "rate_limited" || m.code === "bad_seq") && s.opts.mode !== "listen") {
          // The server did not take a chunk (overloaded), so the ones sent after it are out of sequence:
          // stop sending, ask where the server stands, go on from there. One error shown, not one per chunk.
          s.rejected++;
          if (!s.resyncing) {
            s.resyncing = true;
            showError(`${m.code}: ${m.message} (resyncing)`);
            send({ type: "stats" });
          }
          break;
        }
        showError(`${m.code}: ${m.message}${m.fatal ? " (fatal)" : ""}`);
        if (m.fatal) {
          setState("error");
          for (const t of Object.keys(s.waiters)) resolveWaiter(s, t, null);
        }
        break;
      default:
        log(`ignored message type ${m.type}`);
    }
  }

  function wsUrl() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    // With auth on, open the page as /?token=...: the token is passed on to the WebSocket handshake.
    const token = new URLSearchParams(location.search).get("token");
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    return `${proto}//${location.host}${WS_PATH}${query}`;
  }

  function readOptions(overrides) {
    const o = overrides || {};
    const set = (el, v) => {
      if (v == null) return;
      if (el.tagName === "SELECT" && ![...el.options].some((x) => x.value === String(v))) {
        const opt = document.createElement("option");
        opt.value = opt.textContent = String(v);
        el.appendChild(opt);
      }
      el.value = String(v);
    };
    set(ui.mode, o.mode);
    set(ui.room, o.room);
    set(ui.bandwidth, o.bandwidth);
    set(ui.latency, o.latency);
    set(ui.jitter, o.jitterMs);
    updateModeUi();
    return {
      mode: ui.mode.value,
      room: ui.room.value.trim() || "lobby",
      bandwidth: ui.bandwidth.value === "" ? null : Number(ui.bandwidth.value),
      latency: ui.latency.value || null,
      jitterMs: Number(ui.jitter.value),
      format: o.format || "s16",
      sampleRate: o.sampleRate || null, // null: the device's own rate (44.1/48 kHz); the server resamples
      record: Boolean(o.record), // keep all sent and received audio for xcs.result() (tests)
    };
  }

  async function start(overrides) {
    if (S && !S.closed) throw new Error("already running");
    if (!LITTLE_ENDIAN) throw new Error("this page assumes a little-endian machine");
    if (!window.isSecureContext) showError("not a secure context: the microphone needs https or localhost");
    const opts = readOptions(overrides);
    const s = (S = newSession(opts));
    ui.errors.innerHTML = "";
    ui.start.disabled = true;
    setState("starting", "idle");
    const wantMic = opts.mode !== "listen";
    const wantPlayback = opts.mode !== "publish";
    try {
      s.ctx = new AudioContext(opts.sampleRate ? { sampleRate: opts.sampleRate, latencyHint: "interactive" }
        : { latencyHint: "interactive" });
      ui.inWave.setRate(s.ctx.sampleRate);
      ui.outWave.setRate(s.ctx.sampleRate);
      if (wantMic) {
        await s.ctx.audioWorklet.addModule("/static/worklet.js");
        s.stream = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
        });
        s.source = s.ctx.createMediaStreamSource(s.stream);
        s.capture = new AudioWorkletNode(s.ctx, "xcs-capture", {
          numberOfInputs: 1,
          numberOfOutputs: 1,
          channelCount: 1,
          channelCountMode: "explicit", // downmix the (often stereo) device to mono
          processorOptions: { blockSize: (s.blockSize = Math.round((s.ctx.sampleRate * BLOCK_MS) / 1000)) },
        });
        s.capture.port.onmessage = onCaptureBlock;
      }
      if (wantPlayback) {
        await s.ctx.audioWorklet.addModule("/static/player-worklet.js");
        s.player = new AudioWorkletNode(s.ctx, "xcs-player", {
          numberOfInputs: 0,
          numberOfOutputs: 1,
          outputChannelCount: [1],
          processorOptions: { targetMs: opts.jitterMs, capMs: 3000 },
        });
        s.player.port.onmessage = (e) => {
          s.player_ = e.data;
          if (e.data.type === "drained") resolveWaiter(s, "drained", true);
        };
        s.player.connect(s.ctx.destination);
      }
      if (s.ctx.state !== "running") await s.ctx.resume();

      s.ws = new WebSocket(wsUrl());
      s.ws.binaryType = "arraybuffer";
      await new Promise((resolve, reject) => {
        s.ws.onopen = resolve;
        s.ws.onerror = () => reject(new Error(`cannot connect to ${wsUrl()}`));
      });
      s.ws.onmessage = (e) => onMessage(s, e.data);
      s.ws.onclose = (e) => {
        if (s.doneMsg && !s.closed) log(`connection closed (${e.code}${e.reason ? ` ${e.reason}` : ""})`);
        else if (!s.closed) {
          showError(`connection closed (${e.code}${e.reason ? ` ${e.reason}` : ""})`);
          teardown(s, "error");
        }
      };
      const readyP = waitFor("ready", 10000);
      const hello = {
        type: "hello",
        version: PROTOCOL_VERSION,
        mode: opts.mode,
        sample_rate: s.ctx.sampleRate,
        format: opts.format,
        want: opts.mode === "publish" ? ["codes"] : ["audio", "codes"],
        stats_interval_ms: 1000,
        client: `xcodec-stream web page (${navigator.userAgent.slice(0, 80)})`,
      };
      // A listener takes the room's parameters (sent in `room`), so it asks for none.
      if (opts.bandwidth !== null && opts.mode !== "listen") hello.bandwidth = opts.bandwidth;
      if (opts.latency !== null && opts.mode !== "listen") hello.latency = opts.latency;
      if (opts.mode !== "loopback") hello.room = opts.room;
      send(hello);
      const ready = await readyP;
      if (!ready) throw new Error("the server refused the session");
      if (s.capture) {
        // Connected only now: nothing captured before `ready` is sent, so the first block is seq 0.
        s.source.connect(s.capture);
        s.capture.connect(s.ctx.destination); // the tap outputs silence; the connection keeps it pulled
      }
      setState("running");
      ui.stop.disabled = false;
      log(`started ${opts.mode} at ${s.ctx.sampleRate} Hz`);
    } catch (e) {
      showError(e.message || String(e));
      await teardown(s, "error");
      throw e;
    }
  }

  async function teardown(s, finalState) {
    if (s.closed) return;
    s.closed = true;
    try {
      if (s.capture) s.capture.port.postMessage("stop");
      if (s.source) s.source.disconnect();
      if (s.stream) for (const t of s.stream.getTracks()) t.stop();
      if (s.ws && s.ws.readyState <= 1) s.ws.close(1000, "bye");
      if (s.ctx) await s.ctx.close();
    } catch (e) {
      log(`teardown: ${e.message}`);
    }
    setState(finalState || "idle");
    ui.start.disabled = false;
    ui.stop.disabled = true;
    s.resolveStopped();
  }

  async function stop() {
    const s = S;
    if (!s || s.closed) return;
    ui.stop.disabled = true;
    setState("flushing", "running");
    s.flushing = true;
    if (s.source && s.capture) s.source.disconnect(s.capture);
    try {
      // A listener cannot flush: it just leaves. Publishers and loopback flush so the last words arrive.
      if (s.ws.readyState === WebSocket.OPEN && !s.doneMsg && s.opts.mode !== "listen") {
        const done = waitFor("done", 15000);
        send({ type: "flush" });
        await done;
      }
      if (s.player) {
        const drained = waitFor("drained", s.opts.jitterMs + 3000);
        s.player.port.postMessage({ type: "end" });
        await drained;
      }
    } catch (e) {
      showError(e.message);
    }
    await teardown(s, s.errors.length ? "error" : "idle");
  }

  // ---------- stats ----------

  function stats() {
    const s = S;
    if (!s) return null;
    const now = performance.now();
    while (s.codeLog.length && now - s.codeLog[0][0] > 2000) s.codeLog.shift();
    const bits = s.codeLog.reduce((a, x) => a + x[1], 0);
    const span = Math.min(2000, now - s.startedAt) / 1000;
    const ctxLatency = s.ctx ? (s.ctx.baseLatency || 0) + (s.ctx.outputLatency || 0) : 0;
    const rttP50 = median(s.rtts);
    return {
      mode: s.opts.mode,
      sampleRate: s.ctx ? s.ctx.sampleRate : null,
      algorithmicLatencyMs: s.ready ? s.ready.algorithmic_latency_ms : null,
      rttLastMs: s.rttLast,
      rttP50Ms: rttP50,
      rttCount: s.rtts.length,
      mouthToEarMs: rttP50 === null ? null : rttP50 + s.player_.queuedMs + 1000 * ctxLatency,
      codesKbps: s.codeLog.length && span > 0 ? bits / span / 1000 : null,
      codeFrames: s.codeFrames,
      sentSamples: s.sentSamples,
      receivedSamples: s.recvCount,
      serverDropped: s.serverDropped,
      serverDroppedMs: s.ctx ? (1000 * s.serverDroppedSamples) / s.ctx.sampleRate : 0,
      serverLagMs: s.serverStats ? s.serverStats.lag_ms : null,
      done: s.doneMsg ? { ...s.doneMsg } : null,
      sendDropped: s.sendDropped,
      rejected: s.rejected,
      playerDroppedMs: s.player_.droppedMs,
      underruns: s.player_.underruns,
      playedSamples: s.player_.played,
      bufferedMs: s.player_.queuedMs,
      bufferTargetMs: s.player_.targetMs ?? s.opts.jitterMs,
      inRms: s.inRms,
      outRms: s.player_.rms,
      errors: [...s.errors],
      ready: s.ready ? { ...s.ready } : null,
    };
  }

  const fmtMs = (v) => (v == null ? "–" : `${v.toFixed(0)} ms`);

  function render() {
    const st = stats();
    if (st) {
      ui.rttLast.textContent = fmtMs(st.rttLastMs);
      ui.rttP50.textContent = fmtMs(st.rttP50Ms);
      ui.algo.textContent = fmtMs(st.algorithmicLatencyMs);
      ui.m2e.textContent = fmtMs(st.mouthToEarMs);
      ui.kbps.textContent = st.codesKbps == null ? "–" : `${st.codesKbps.toFixed(2)} kbps`;
      if (S.ready && S.ready.bandwidth != null) ui.kbpsLabel.textContent = `bitrate · nominal ${S.ready.bandwidth} kbps`;
      ui.rate.textContent = st.sampleRate ? `${st.sampleRate} Hz` : "–";
      ui.buffered.textContent = st.bufferedMs == null ? "–"
        : `${st.bufferedMs.toFixed(0)} / ${st.bufferTargetMs.toFixed(0)} ms`;
      const gaps = st.serverDropped + st.sendDropped + st.rejected;
      // gaps: audio the server dropped (slow reader) or the page could not send; skipped: jitter-buffer trims
      ui.dropped.textContent = gaps || st.playerDroppedMs
        ? `${gaps} gaps · ${st.playerDroppedMs.toFixed(0)} ms skipped` : "0";
      ui.lag.textContent = fmtMs(st.serverLagMs);
      ui.underruns.textContent = String(st.underruns);
      ui.inLevel.style.width = `${levelPercent(st.inRms)}%`;
      ui.outLevel.style.width = `${levelPercent(st.outRms)}%`;
    }
    ui.inWave.draw();
    ui.outWave.draw();
  }

  // ---------- test hooks ----------

  function receivedAudio() {
    // Placed by sample index, relative to the first received sample; gaps stay zero.
    const s = S;
    if (!s || !s.recvChunks.length) return new Float32Array(0);
    const out = new Float32Array(s.recvSamples - s.recvStart);
    for (const c of s.recvChunks) out.set(c.pcm, c.sample - s.recvStart);
    return out;
  }

  async function run(seconds, overrides) {
    await start({ record: true, ...overrides });
    await new Promise((r) => setTimeout(r, seconds * 1000));
    S.live = stats(); // before stop: the live figures as the page shows them
    await stop();
    return result();
  }

  function result() {
    // Everything a test checks: what was sent and received (base64 float32), the figures, the DOM text.
    render();
    const live = S.live || stats();
    return {
      stats: stats(),
      live,
      sampleRate: live.sampleRate,
      sent: toBase64(concat(S.sentChunks)),
      received: toBase64(receivedAudio()),
      receivedStart: S.recvStart,
      room: S.room ? Object.fromEntries(Object.entries(S.room).filter(([, v]) => !(v instanceof Uint8Array))) : null,
      dom: {
        rttLast: ui.rttLast.textContent,
        rttP50: ui.rttP50.textContent,
        algo: ui.algo.textContent,
        kbps: ui.kbps.textContent,
        state: ui.state.textContent,
        errors: ui.errors.textContent,
      },
    };
  }

  window.xcs = {
    start,
    stop,
    run,
    result,
    stats,
    snapshot() {
      if (S) S.live = stats(); // keep the live figures of a session that a room's end will stop
    },
    stopped() {
      return S ? S.stopped : Promise.resolve();
    },
    get received() {
      return receivedAudio();
    },
    get sent() {
      return S ? concat(S.sentChunks) : new Float32Array(0);
    },
    get serverInfo() {
      return serverInfo;
    },
  };

  // ---------- boot ----------

  function boot() {
    for (const [k, id] of Object.entries({
      mode: "mode", room: "room", roomLabel: "room-label", bandwidth: "bandwidth", latency: "latency",
      jitter: "jitter", start: "start", stop: "stop", state: "state", server: "server", errors: "errors",
      log: "log", rttLast: "rtt-last", rttP50: "rtt-p50", algo: "algo", m2e: "m2e", kbps: "kbps",
      kbpsLabel: "kbps-label", rate: "rate", buffered: "buffered", dropped: "dropped", lag: "lag", underruns: "underruns",
      inLevel: "in-level", outLevel: "out-level",
    })) ui[k] = $(id);
    ui.inWave = new Wave($("in-wave"));
    ui.outWave = new Wave($("out-wave"));
    ui.mode.addEventListener("change", updateModeUi);
    ui.start.addEventListener("click", () => start().catch(() => {}));
    ui.stop.addEventListener("click", () => stop());
    updateModeUi();
    if (!MP) showError("msgpack library failed to load");
    loadServerInfo();
    setInterval(render, 200);
  }

  boot();
})();
