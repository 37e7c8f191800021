"""``python -m facephi.cli`` (and ``accelerate launch -m facephi.cli``): the ``facephi`` command."""

import sys

from facephi.cli import main

sys.exit(main())
