"""``python -m millpond.cli``: the ``millpond`` command, without the console script."""

import sys

from .command import main

sys.exit(main())
