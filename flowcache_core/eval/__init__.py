"""Evaluation, apart from the engine: metrics, evaluate, sweep, benchmark sampling. The engine never imports it."""
