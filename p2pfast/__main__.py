import sys

from p2pfast.front.cli import main

sys.exit(main())
