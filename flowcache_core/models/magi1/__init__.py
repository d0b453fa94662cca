"""MAGI-1: the first model family (see family.py)."""
