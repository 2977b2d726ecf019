"""Quality evaluation of the codec: perceptual metrics (PESQ-WB, STOI) against the input, Opus as reference."""
