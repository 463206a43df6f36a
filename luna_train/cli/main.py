"""``luna-train``: the click group; each command lives in its own module and only parses arguments.

User errors (:class:`~luna_prep.errors.LunaError`, a missing input) end in one line and exit status 1,
bad option values and config keys in a usage error and exit status 2 (:class:`~luna_prep.cli_common.LunaGroup`).
"""

from __future__ import annotations

from luna_prep.cli_common import luna_group
from luna_train.cli.detect import detect
from luna_train.cli.evaluate import evaluate
from luna_train.cli.export import export
from luna_train.cli.froc import froc
from luna_train.cli.predict import predict
from luna_train.cli.run import run


@luna_group("luna-train")
def main() -> None:
    """Nodule segmentation training and evaluation on luna-patches stores."""


for command in (run, evaluate, froc, detect, predict, export):
    main.add_command(command)


if __name__ == "__main__":
    main()
