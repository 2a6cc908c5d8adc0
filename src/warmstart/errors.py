"""The one exception type the CLI turns into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: say what is wrong, where, and what to do. Never a bug in warmstart."""
