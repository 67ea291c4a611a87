"""``python -m arceus.cli``: the same as the ``arceus`` command."""

import sys

from . import main

sys.exit(main())
