"""``python -m shardlab`` is the ``shardlab`` command."""

import sys

from shardlab.cli import main

sys.exit(main())
