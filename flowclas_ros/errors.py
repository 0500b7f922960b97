"""The one base class of expected, user-facing errors.

Anything that subclasses :class:`FlowclasError` is a problem with what the user gave us (a
flag, a file, a bundle, a message) and is reported as one line; everything else is a bug and
keeps its traceback. Library modules raise the most specific subclass that fits.
"""


class FlowclasError(Exception):
    """An expected error about the user's input: commands print it as one line and exit 1."""


class UserError(FlowclasError):
    """A bad flag value, missing file or otherwise unusable input."""
