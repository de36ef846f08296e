"""The sampledrec command line: a thin layer over the public API.

The package owns the ``sampledrec`` command (the console script calls :func:`main`): ``app``
builds the parser and maps errors to exit codes; each command group is one module with a
``register`` function that adds its commands and binds them to their handlers (``init``,
``policy``, ``log``, ``recordings``, ``retention``, ``decide``, ``audit``, ``keys``, ``subject``,
``serve``, ``demo``); ``_common`` holds what they share (exit codes, output, argument helpers).
"""

from .app import main

__all__ = ["main"]
