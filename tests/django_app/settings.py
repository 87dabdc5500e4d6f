"""Settings of the test project: no database, one channel layer on the broker."""

from __future__ import annotations

import os

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "django_app.asgi.application"
USE_TZ = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "message_broker.channels_layer.BrokerChannelLayer",
        "CONFIG": {
            "host": "127.0.0.1",
            "port": int(os.environ["MESSAGE_BROKER_PORT"]),
            "prefix": os.environ.get("CHANNELS_PREFIX", "asgi"),
        },
    },
}
