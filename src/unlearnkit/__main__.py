"""`python -m unlearnkit ...` (and `accelerate launch -m unlearnkit ...`): the command line."""

import sys

from unlearnkit.cli import main

sys.exit(main())
