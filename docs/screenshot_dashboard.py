"""Regenerates docs/qt_dashboard.png: the example dashboard hosting its own broker,
after a second client has sent it a few messages.

    xvfb-run -a python docs/screenshot_dashboard.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from qt_dashboard import Dashboard

from message_broker.qt_client import QtBrokerHost

OUTPUT = Path(__file__).resolve().parent / "qt_dashboard.png"


def main() -> int:
    app = QApplication(sys.argv)
    host = QtBrokerHost(parent=app)
    port = host.start()
    title = f"message_broker dashboard (hosting 127.0.0.1:{port})"
    window = Dashboard(host.create_client("dashboard"), title)
    window.show()
    sender = host.create_client("saw-runner")

    def send_some() -> None:
        sender.publish("jobs.activated", {"job_id": "123", "job_number": "ABC123"})
        sender.publish("scripts.saw1.started", {"pid": 4242})
        sender.publish("jobs.12345.updated", {"progress": 0.75, "note": "Grüße ✓"})
        sender.publish("scripts.saw1.stopped", {"exit_code": 0})

    def capture() -> None:
        window.client.publish("jobs.activated", {"job_id": "from the dashboard"})
        QTimer.singleShot(300, save)

    def save() -> None:
        image = window.screen().grabWindow(window.winId())
        image.save(str(OUTPUT))
        print(f"saved {OUTPUT} ({image.width()}x{image.height()})")
        sender.disconnect_from_broker()
        window.close()
        app.quit()

    window.client.subscribed.connect(lambda _: sender.connect_to_broker())
    sender.connected.connect(lambda: QTimer.singleShot(200, send_some))
    sender.connected.connect(lambda: QTimer.singleShot(600, capture))
    code = app.exec()
    host.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
