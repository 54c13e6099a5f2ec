"""`python -m common.cli` is the `fedseal` command."""

import sys

from common.cli import main

sys.exit(main())
