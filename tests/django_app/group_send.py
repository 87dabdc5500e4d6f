"""Sends ``python -m django_app.group_send TEXT`` to the room from a process of its
own, as a management command or a view would: through async_to_sync."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

import django
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from django_app.consumers import ROOM


def main() -> None:
    django.setup()
    layer = get_channel_layer()
    async_to_sync(layer.group_send)(ROOM, {"type": "chat.message", "text": sys.argv[1]})
    print("sent", flush=True)


if __name__ == "__main__":
    main()
