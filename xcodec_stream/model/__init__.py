"""Offline X-Codec model: config, acoustic (DAC) and semantic branches, quantizer, loading."""
