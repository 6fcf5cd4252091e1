"""``python -m idsync_server_ref`` runs the server, as ``idsync-server`` does."""

import sys

from .command import main

sys.exit(main())
