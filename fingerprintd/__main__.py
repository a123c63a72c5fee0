import sys

from fingerprintd.cli import main

sys.exit(main())
