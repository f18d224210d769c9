"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem with the user's input (a path, a file, an option): shown as one line, no traceback."""
