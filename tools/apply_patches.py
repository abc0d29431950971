#!/usr/bin/env python3
"""Run ``apply-patches`` from a checkout without installing the console script."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atom_ckfree.cli import main

sys.exit(main())
