"""Training a small X-Codec on speech: corpus, data, losses, discriminators, the training loop."""
