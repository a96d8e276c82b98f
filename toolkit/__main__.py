"""``python -m toolkit ...`` and ``accelerate launch -m toolkit train ...``."""

import sys

from toolkit.cli import main

sys.exit(main())
