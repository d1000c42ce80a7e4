"""The one exception type that the command line turns into a one-line message."""


class UserInputError(ValueError):
    """Bad input from the user (paths, options, checkpoints): the message says what and how to fix it."""
