"""``python -m temporal_shield``."""

import sys

from ._main import main

sys.exit(main())
