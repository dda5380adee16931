"""``python -m dead_directions.cli``: the command line."""

import sys

from dead_directions.cli import main

sys.exit(main())
