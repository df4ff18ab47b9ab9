"""``python -m scandsl.bench``."""

import sys

from ._cli import bench_main

sys.exit(bench_main())
