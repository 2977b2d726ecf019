// Playback AudioWorklet: a jitter buffer that starts at a target fill, re-syncs on underrun, trims latency creep.
"use strict";

class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions;
    // Fill to reach before (re)starting playback. The page measures the arrival jitter and moves it.
    this.target = Math.round((o.targetMs / 1000) * sampleRate);
    // Hard cap on the fill (memory, and latency after a long stall). Below it only the window rule trims, so
    // the burst that a flush sends at the end of a stream (the codec's lookahead) is played, not dropped.
    this.cap = Math.round((o.capMs / 1000) * sampleRate);
    // After a stall the late audio arrives in a burst and the fill stays above the target: latency crept up.
    // If the lowest fill over a whole window is above target + slack, skip the excess (one small jump).
    this.slack = Math.round(0.02 * sampleRate);
    this.window = Math.round(1.0 * sampleRate);
    this.windowMin = Infinity;
    this.windowPlayed = 0;
    this.chunks = []; // queue of Float32Array
    this.offset = 0; // read position inside chunks[0]
    this.queued = 0;
    this.playing = false;
    this.ending = false; // stream flushed: play out what is left even if under the target
    this.underruns = 0;
    this.droppedSamples = 0;
    this.played = 0;
    this.sumSq = 0; // output energy since the last report, for the level meter
    this.peak = 0;
    this.sinceReport = 0;
    this.queuedSum = 0;
    this.reportEvery = Math.round(0.05 * sampleRate);
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "pcm") {
      this.chunks.push(msg.pcm);
      this.queued += msg.pcm.length;
      if (this.queued > this.cap) this.drop(this.queued - this.target);
    } else if (msg.type === "target") {
      this.target = Math.round((msg.ms / 1000) * sampleRate);
    } else if (msg.type === "end") {
      this.ending = true;
      if (this.queued === 0) this.report("drained");
    } else if (msg.type === "reset") {
      this.chunks = [];
      this.offset = 0;
      this.queued = 0;
      this.playing = false;
      this.ending = false;
    }
  }

  report(type) {
    const n = Math.max(this.sinceReport, 1);
    this.port.postMessage({
      type,
      queuedMs: (1000 * this.queuedSum) / n / sampleRate,
      targetMs: (1000 * this.target) / sampleRate,
      underruns: this.underruns,
      droppedMs: (1000 * this.droppedSamples) / sampleRate,
      played: this.played,
      rms: Math.sqrt(this.sumSq / n),
      peak: this.peak,
    });
    this.sumSq = 0;
    this.peak = 0;
    this.sinceReport = 0;
    this.queuedSum = 0;
  }

  drop(n) {
    // Drift or a burst after a stall: skip the oldest audio so latency goes back to the target.
    this.droppedSamples += n;
    this.queued -= n;
    while (n > 0) {
      const left = this.chunks[0].length - this.offset;
      if (left <= n) {
        n -= left;
        this.chunks.shift();
        this.offset = 0;
      } else {
        this.offset += n;
        n = 0;
      }
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    let drained = false;
    if (!this.playing && (this.queued >= this.target || (this.ending && this.queued > 0))) this.playing = true;
    if (this.playing) {
      while (i < out.length && this.chunks.length > 0) {
        const c = this.chunks[0];
        const n = Math.min(out.length - i, c.length - this.offset);
        out.set(c.subarray(this.offset, this.offset + n), i);
        i += n;
        this.offset += n;
        this.queued -= n;
        if (this.offset === c.length) {
          this.chunks.shift();
          this.offset = 0;
        }
      }
      if (i < out.length) {
        // Underrun: pad with silence and wait for the target fill again rather than stutter.
        this.playing = false;
        if (!this.ending) this.underruns++;
        else drained = true;
      }
    }
    out.fill(0, i);
    this.played += i;
    if (this.playing && !this.ending) {
      this.windowMin = Math.min(this.windowMin, this.queued);
      this.windowPlayed += out.length;
      if (this.windowPlayed >= this.window) {
        if (this.windowMin > this.target + this.slack) this.drop(this.windowMin - this.target);
        this.windowMin = Infinity;
        this.windowPlayed = 0;
      }
    } else {
      this.windowMin = Infinity;
      this.windowPlayed = 0;
    }
    for (let k = 0; k < i; k++) {
      const v = out[k];
      this.sumSq += v * v;
      if (Math.abs(v) > this.peak) this.peak = Math.abs(v);
    }
    for (let ch = 1; ch < outputs[0].length; ch++) outputs[0][ch].set(out);
    this.sinceReport += out.length;
    this.queuedSum += this.queued * out.length; // time-weighted, so the reported fill is an average
    if (drained) this.report("drained"); // the final figures: everything received has been played
    else if (this.sinceReport >= this.reportEvery) this.report("stats");
    return true;
  }
}

registerProcessor("xcs-player", PlayerProcessor);
