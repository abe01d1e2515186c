"""``python -m stream_scorer`` runs the command line."""

import sys

from stream_scorer.cli import main

sys.exit(main())
