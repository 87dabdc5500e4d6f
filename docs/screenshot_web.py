"""Takes docs/web-explorer.png: the explorer page of a broker with a few clients and
live traffic, in headless Chromium (Debian's `chromium`).

    python docs/screenshot_web.py
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time

from playwright.sync_api import sync_playwright

from message_broker import BrokerConfig, MessageBroker
from message_broker.sync import SyncBrokerClient

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web-explorer.png")
SECONDS_OF_TRAFFIC = 20


def traffic(port: int, stop: threading.Event) -> None:
    """Sensors publishing, a dashboard subscribed, a service answering requests."""
    with (
        SyncBrokerClient("plant-sensors", host="127.0.0.1", port=port) as sensors,
        SyncBrokerClient("dashboard", host="127.0.0.1", port=port) as dashboard,
        SyncBrokerClient("recipe-service", host="127.0.0.1", port=port) as service,
    ):
        dashboard.subscribe(["plant.#", "orders.*"], lambda m: None)
        service.subscribe("recipes.get", lambda m: {"recipe": m.payload, "steps": 4})
        tick = 0
        while not stop.is_set():
            wave = 20 + 5 * math.sin(tick / 10)
            for line in (1, 2):
                sensors.publish(f"plant.line{line}.temperature", {"celsius": round(wave + line, 2)})
                sensors.publish(f"plant.line{line}.pressure", {"bar": round(1 + wave / 100, 3)})
            if tick % 5 == 0:
                sensors.publish("orders.created", {"order": tick, "items": tick % 7 + 1})
                dashboard.request("recipes.get", f"bread-{tick % 3}")
            tick += 1
            time.sleep(0.02 + 0.03 * (1 + math.sin(tick / 15)))


def main() -> None:
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0, http_port=0))
    port = broker.start_sync()
    stop = threading.Event()
    feeder = threading.Thread(target=traffic, args=(port, stop))
    feeder.start()
    try:
        with sync_playwright() as playwright:
            chromium = shutil.which("chromium") or "/usr/bin/chromium"
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1050})
            assert broker.http_url is not None
            page.goto(broker.http_url)
            page.wait_for_timeout(SECONDS_OF_TRAFFIC * 1000)
            page.screenshot(path=OUT, full_page=True)
            browser.close()
    finally:
        stop.set()
        feeder.join(timeout=10)
        broker.stop_sync()
    print(OUT)


if __name__ == "__main__":
    main()
