"""`python -m ptq_bench`: the `ptq-bench` command (pyproject's console script), for an install without it."""

import sys

from ptq_bench.cli import main

sys.exit(main())
