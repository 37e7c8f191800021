"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class FacePhiError(Exception):
    """An error caused by the user's input (missing path, bad format, ...), reported without traceback."""
