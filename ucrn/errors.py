"""The one exception type for mistakes a user can make (bad file, bad value, bad key)."""


class UcrnError(Exception):
    """A user-facing error: its message names the thing that is wrong and what to do.

    The command line prints the message on one line and exits with status 2.
    """
