"""`python -m prunerzero.cli ...`: the same as the `prunerzero` console script."""
import sys

from . import main

sys.exit(main())
