"""Errors that end a command with one line and exit status 2 (no traceback)."""


class UserError(Exception):
    """A user mistake or bad input: the message names the problem and the remedy.

    The command-line runner prints ``<task>: error: <message>`` on one line and exits
    with status 2; ``--doraise`` shows the traceback instead.
    """


class DataQualityError(UserError):
    """The data of one unit of work cannot be processed (no stars, no overlap, ...).

    Inside a multi-unit run this flags the unit (``quality`` in the ledger) and the run
    goes on; later stages leave the unit out.
    """
