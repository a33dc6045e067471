"""The base of every error a user can act on (bad input, a failed job).

The CLI shows these as one message without a traceback; anything else is a bug and keeps its
traceback.
"""


class CrdistError(Exception):
    pass
