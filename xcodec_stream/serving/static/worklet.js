// Capture AudioWorklet: collects the microphone's 128-frame render quanta into fixed blocks and posts them.
"use strict";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.blockSize;
    this.buf = new Float32Array(this.size);
    this.n = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "stop") this.running = false;
    };
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    // No input channel yet (source not connected) is not silence: skip it so no fake samples are sent.
    if (!ch) return this.running;
    for (let i = 0; i < ch.length; i++) {
      this.buf[this.n++] = ch[i];
      if (this.n === this.size) {
        // Transfer, not copy: the block is handed to the main thread and a fresh one is started.
        this.port.postMessage({ pcm: this.buf, t: currentTime }, [this.buf.buffer]);
        this.buf = new Float32Array(this.size);
        this.n = 0;
      }
    }
    return this.running;
  }
}

registerProcessor("xcs-capture", CaptureProcessor);
