import sys

from scandsl.cli import main

sys.exit(main())
