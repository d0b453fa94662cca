"""Command-line interface: parse, call flowcache_core, render with rich. No logic lives here."""
