"""Errors that the command line reports as one line with exit code 2 (bad input)."""
from __future__ import annotations


class BadInput(Exception):
    """The user's input (a file, a shape, a profile, a flag) cannot be used; the message says what and where."""
