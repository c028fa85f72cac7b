"""The one exception type for mistakes a user can make (bad file, bad value, bad key)."""


class UcrnError(Exception):
    """A user-facing error: its message names the thing that is wrong and what to do.

    The command line prints the message on one line and exits with status 2.
    """


def exit_status(command, program: str, interrupted: str) -> int:
    """Run ``command()``; a ``UcrnError`` becomes one line on stderr and status 2."""
    import sys

    try:
        command()
    except UcrnError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted; {interrupted}", file=sys.stderr)
        return 130
    return 0
