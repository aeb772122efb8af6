"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix; `str(err)` is the whole message, `exit_code` the status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
