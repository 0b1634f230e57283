"""Errors a user can meet; each message names the file, key or id at fault."""


class CocosegError(Exception):
    """Base class: the stage entry points print these without a traceback and exit 2."""


class ParamError(CocosegError):
    """A key or value in params.yaml is unknown, mistyped or out of range."""


class DataError(CocosegError):
    """An input file (annotations, image, checkpoint) is missing, malformed or unsafe."""


class DownloadError(CocosegError):
    """A download failed for good (after retries) or its content did not verify."""
