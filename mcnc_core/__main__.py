"""``python -m mcnc_core`` runs the ``mcnc`` command."""

import sys

from mcnc_core.cli import main

sys.exit(main())
