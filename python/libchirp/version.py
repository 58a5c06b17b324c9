"""Version (as python-chirp's ``libchirp.version``)."""

from libchirp._native import __version__  # noqa: F401
