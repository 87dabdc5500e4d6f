"""A small dashboard: connection state, a publish button, and a live list of messages.

    python examples/qt_dashboard.py [--host] [--port] [--embedded]

With --embedded the window hosts its own broker on a free port (one app serves the
others); otherwise it connects to a broker on localhost:15234 (or --host, --port).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMainWindow,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from message_broker.qt_client import QtBrokerClient, QtBrokerHost

RED, GREEN = "#b00", "#070"


class Dashboard(QMainWindow):
    def __init__(self, client: QtBrokerClient, title: str) -> None:
        super().__init__()
        self.setWindowTitle(title)
        self.resize(640, 420)
        self.client = client
        self.client.setParent(self)
        self.sent = 0

        self.state = QLabel("connecting…")
        self.state.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.topic = QLineEdit("jobs.activated")
        self.payload = QLineEdit('{"job_id": "123"}')
        self.send = QPushButton("Publish")
        self.send.clicked.connect(self.publish)
        self.messages = QListWidget()

        row = QHBoxLayout()
        row.addWidget(QLabel("Topic"))
        row.addWidget(self.topic)
        row.addWidget(QLabel("Payload"))
        row.addWidget(self.payload, stretch=1)
        row.addWidget(self.send)
        layout = QVBoxLayout()
        layout.addWidget(self.state)
        layout.addLayout(row)
        layout.addWidget(QLabel("Messages (jobs.#, scripts.#, system.client.*)"))
        layout.addWidget(self.messages)
        central = QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)

        client.connected.connect(self.on_connected)
        client.disconnected.connect(lambda: self.show_state("disconnected: reconnecting…", "#b00"))
        client.connection_failed.connect(
            lambda why: self.show_state(f"cannot connect: {why}", "#b00")
        )
        client.message_received.connect(self.on_message)
        client.error_occurred.connect(lambda text: self.messages.addItem(f"error: {text}"))
        client.connect_to_broker()

    def show_state(self, text: str, color: str) -> None:
        self.state.setText(text)
        self.state.setStyleSheet(f"font-weight: bold; color: {color}; padding: 6px;")

    @Slot()
    def on_connected(self) -> None:
        self.show_state(f"connected as {self.client.client_id}", GREEN)
        self.client.subscribe(["jobs.#", "scripts.#", "system.client.*"])

    @Slot()
    def publish(self) -> None:
        try:
            payload = json.loads(self.payload.text())
        except ValueError as error:
            self.messages.addItem(f"error: the payload is not JSON ({error})")
            return
        self.client.publish(self.topic.text(), payload)

    @Slot(str, dict, str, str)
    def on_message(self, topic: str, payload: dict, sender: str, msg_id: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.messages.addItem(
            f"{stamp}  {topic}  from {sender}  {json.dumps(payload, ensure_ascii=False)}"
        )
        self.messages.scrollToBottom()

    def closeEvent(self, event) -> None:
        self.client.disconnect_from_broker()
        super().closeEvent(event)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=15234)
    parser.add_argument("--embedded", action="store_true", help="host a broker in this window")
    args = parser.parse_args()
    app = QApplication(sys.argv)
    host = None
    if args.embedded:
        host = QtBrokerHost(parent=app)
        port = host.start()
        client = host.create_client("dashboard")
        title = f"message_broker dashboard (hosting 127.0.0.1:{port})"
    else:
        client = QtBrokerClient("dashboard", args.host, args.port)
        title = f"message_broker dashboard ({args.host}:{args.port})"
    window = Dashboard(client, title)
    window.show()
    code = app.exec()
    if host is not None:
        host.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
