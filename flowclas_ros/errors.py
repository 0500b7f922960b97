"""Errors every command reports as one line."""


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 1."""
