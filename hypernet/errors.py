"""The one exception type for mistakes a user can make (bad input, missing files, mismatched models).

Anything raised as ``T2LError`` is shown to the user as its message alone: the CLI prints one line and
exits non-zero, the server turns it into an HTTP error. Everything else is a bug and keeps its traceback.
"""


class T2LError(Exception):
    """A user-caused error whose message is complete and safe to show as is."""
