"""``python -m curvature.cli`` (and ``torchrun ... -m curvature.cli``): the ``curvature``
command."""

import sys

from curvature.cli import main

sys.exit(main())
