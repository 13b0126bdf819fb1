"""The one exception type for mistakes a user can fix (bad input, bad options, bad files).

The CLI prints these as a single ``error: ...`` line and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class GanEngineError(ValueError):
    """A problem with the user's input, options or files, with a message that says what to do."""


def check_choice(what, value, allowed):
    """Raise GanEngineError unless value is one of `allowed`, listing the choices."""
    if value not in allowed:
        raise GanEngineError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
