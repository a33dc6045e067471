import sys

from crdist.cli import main

sys.exit(main())
