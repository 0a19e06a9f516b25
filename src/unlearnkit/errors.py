"""The exceptions the CLI turns into a one-line message and an exit status (no traceback)."""


class UserError(Exception):
    """Bad input the user can fix: the message names the problem and the fix, on one line. Exit status 2."""

    exit_code = 2


class RunInterrupted(UserError):
    """SIGTERM/SIGINT stopped training after a checkpoint was written; ``--resume`` continues it.
    Exit status 128 + the signal number (143 for SIGTERM, 130 for SIGINT), as a shell reports a signal."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


class TrainingDiverged(UserError):
    """A non-finite loss or gradient norm: no update was applied and no model written. Exit status 3."""

    exit_code = 3
