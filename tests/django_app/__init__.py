"""A small Django project with one WebSocket consumer on BrokerChannelLayer, served by
Daphne and by uvicorn in tests/test_channels_django.py. ``MESSAGE_BROKER_PORT`` says
where its broker listens (on 127.0.0.1)."""
