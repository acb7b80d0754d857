"""``python -m client.runner``: client.runner.main."""

import sys

from client.runner.main import main

sys.exit(main())
