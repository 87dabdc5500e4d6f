"""``python -m message_broker``: the ``message-broker`` command (message_broker._cli)."""

import sys

from message_broker._cli import main

if __name__ == "__main__":
    sys.exit(main())
