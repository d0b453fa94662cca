"""User-facing errors.

Anything the user can fix (a bad flag value, a missing file, a checkpoint that does not fit the config)
raises `FlowcacheError` with a one-line message naming the bad value and what is allowed. The CLI turns
it into that line on stderr and exit code 2; library users catch it like any ValueError.
"""


class FlowcacheError(ValueError):
    """A problem with the user's input, reported as one line."""
