"""Errors that carry a message meant for a person.

A ``UserError`` is printed by the CLI as one line, without a traceback, and turns into a
non-zero exit status. Anything else reaching the top of the CLI is a bug and is shown as one.
"""


class UserError(Exception):
    """Bad input or an unusable environment, described in one line for the user."""


class SourceError(Exception):
    """The origin could not give us what we asked for (down, refused, unknown ref, bad data).

    The message is one line, safe to show and to log: it never contains credentials.
    """
