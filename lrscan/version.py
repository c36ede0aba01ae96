"""The installed lrscan's version string, which stores and analysis results record."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lrscan")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
