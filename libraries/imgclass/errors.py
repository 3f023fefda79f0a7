"""Exceptions that carry a message meant for the user.

Scripts catch :class:`ImgClassError` at the top and print its message without a
traceback: these errors describe bad input (parameters, images, missing files),
not bugs, so the message itself must say what is wrong and how to fix it.
"""


class ImgClassError(Exception):
    """Base class of every user-facing error raised by the toolkit."""


class ParameterError(ImgClassError, ValueError):
    """A parameter is unknown, has the wrong type or an invalid value."""


class DatasetError(ImgClassError):
    """The image folder is missing, empty, or a class has too few images."""


class WeightsNotFoundError(ImgClassError):
    """Pretrained weights could not be found locally nor downloaded."""


class MissingArtifactError(ImgClassError):
    """An earlier pipeline step has not been run (its output file is missing)."""
