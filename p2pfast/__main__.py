import sys

from p2pfast.cli import main

sys.exit(main())
