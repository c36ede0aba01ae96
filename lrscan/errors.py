"""The one exception type a user of lrscan can cause and fix."""


class LrscanError(Exception):
    """Bad input or a state the user must resolve; the CLI prints it as one line and exits 2."""
