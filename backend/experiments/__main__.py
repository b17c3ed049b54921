"""`python -m backend.experiments run ...`: see backend/experiments/cli.py."""

import sys

from backend.experiments.cli import main

sys.exit(main())
