"""Errors that the library raises for bad user input.

Every input problem a user can cause (a missing file, a corrupt archive, an
impossible episode shape, an unknown option) raises a subclass of
`UserInputError`. Entry points in `experiments/` catch exactly this class and
print its message without a traceback, so the message must say what is wrong
and what to do about it.
"""


class UserInputError(Exception):
    """A problem with what the user asked for or supplied."""


class DataError(UserInputError):
    """A dataset file is missing, unreadable or not in the expected format."""


class ConfigError(UserInputError):
    """A configuration value is invalid or inconsistent with the data."""


class TrainingDiverged(Exception):
    """Training produced a non-finite loss; the run stopped without results.

    Not a `UserInputError`: the input may be valid and the optimisation
    unstable. Entry points print its one-line message and exit with status 3.
    """
