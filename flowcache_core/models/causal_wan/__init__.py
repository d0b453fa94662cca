"""Streaming causal Wan (Self-Forcing / LongLive inference on the Wan2.1 DiT) as a family plugin."""
