"""Errors the user can act on: the command line prints their message alone."""


class PowdrError(Exception):
    """A problem with the user's input, files or settings, explained in one sentence."""


class CheckpointError(PowdrError):
    """A checkpoint file that is not ours, is damaged, or does not fit this version."""
