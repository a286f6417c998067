"""``python -m agentcast.adapters serve ...`` is ``agentcast serve ...``."""

import sys

from .cli import main

sys.exit(main())
