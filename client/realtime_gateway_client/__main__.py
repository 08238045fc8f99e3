"""`python -m realtime_gateway_client chat|tail ...`: see client/realtime_gateway_client/cli.py."""

import sys

from realtime_gateway_client.cli import main

sys.exit(main())
