"""``python -m service``: run the server without the ``mcnc`` dispatcher."""

from __future__ import annotations

import sys

from service.cli import main

sys.exit(main())
