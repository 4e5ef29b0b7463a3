"""`python -m study.launch`: the study's entry point.

At this stage of the project it runs the base stage only: the original and the
retrained model on the chosen data set, with their metrics on the report halves.
"""

from __future__ import annotations

import sys

from trainables.base import main

if __name__ == "__main__":
    sys.exit(main())
