"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class FacePhiError(Exception):
    """An error caused by the user's input (missing path, bad format, ...), reported without traceback."""


EMPTY_PATH = "an empty path names no file or folder (an unset shell variable?)"
"""Why an empty path is refused everywhere (it would otherwise mean the working directory)."""
