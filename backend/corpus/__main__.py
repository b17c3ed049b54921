import sys

from backend.corpus.cli import main

sys.exit(main())
