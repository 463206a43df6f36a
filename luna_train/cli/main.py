"""``luna-train``: the click group; each command lives in its own module and only parses arguments.

User errors (:class:`~luna_prep.errors.LunaError`, a missing input) end in one line and exit status 1,
bad option values and config keys in a usage error and exit status 2 (:class:`~luna_prep.cli_common.LunaGroup`).
"""

from __future__ import annotations

import logging
import sys

from luna_prep.cli_common import luna_group
from luna_train.cli.detect import detect
from luna_train.cli.evaluate import evaluate
from luna_train.cli.export import export
from luna_train.cli.froc import froc
from luna_train.cli.predict import predict
from luna_train.cli.run import run


class StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes (test runners swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Progress lines of the ``luna_train`` logger to stderr, one per line with a timestamp (SLURM logs keep them).

    Called by the command line only: a program that imports luna_train configures logging itself.
    """
    logger = logging.getLogger("luna_train")
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


@luna_group("luna-train")
def main() -> None:
    """Nodule segmentation training and evaluation on luna-patches stores."""
    setup_logging()


for command in (run, evaluate, froc, detect, predict, export):
    main.add_command(command)


if __name__ == "__main__":
    main()
