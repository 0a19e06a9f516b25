"""The one exception type that the CLI turns into a one-line message and exit status 2."""


class UserError(Exception):
    """Bad input the user can fix: the message names the problem and the fix, on one line."""
