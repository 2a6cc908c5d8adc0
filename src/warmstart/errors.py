"""The one exception type the CLI turns into a single line and exit code 2, and the one way to warn."""


class UserError(Exception):
    """Bad input from the user: say what is wrong, where, and what to do. Never a bug in warmstart."""


def warn(message: str) -> None:
    """One line on stderr in the same voice as the errors: `warmstart: warning: ...`.

    Every warning warmstart gives (a damaged checkpoint skipped, a cut metrics line removed, a data format
    mismatch allowed) goes through here, never through Python's two-line `warnings.warn`.
    """
    import sys

    print(f"warmstart: warning: {message}", file=sys.stderr, flush=True)
