"""A Qt main window that talks to the broker, with the broker's port as an option.

python examples/qt_main_window.py [--port PORT]   (a broker must run on localhost:PORT,
                                                   default 15234)
"""

import argparse
import sys

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QApplication, QMainWindow

from message_broker.qt_client import QtBrokerClient


class MainWindow(QMainWindow):
    def __init__(self, port=15234):
        super().__init__()
        self._broker = QtBrokerClient("main_app", port=port, parent=self)
        # Connect signals
        self._broker.connected.connect(self._on_connected)
        self._broker.disconnected.connect(self._on_disconnected)
        self._broker.message_received.connect(self._on_message)
        self._broker.error_occurred.connect(self._on_error)
        self._broker.connect_to_broker()

    @Slot()
    def _on_connected(self):
        self._broker.subscribe(["jobs.*"])

    @Slot()
    def _on_disconnected(self):
        print("disconnected", flush=True)

    @Slot(str, dict, str, str)
    def _on_message(self, topic, payload, sender, msg_id):
        print(f"{topic} from {sender}: {payload}", flush=True)

    @Slot(str)
    def _on_error(self, message):
        print(f"error: {message}", flush=True)

    def publish_event(self, job_id):
        self._broker.publish("jobs.activated", {"job_id": job_id})

    def closeEvent(self, event):
        self._broker.disconnect_from_broker()
        super().closeEvent(event)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A Qt main window that talks to the broker.")
    parser.add_argument("--port", type=int, default=15234, help="the broker's port (default 15234)")
    args, qt_args = parser.parse_known_args()
    app = QApplication([sys.argv[0], *qt_args])
    window = MainWindow(args.port)
    window.show()
    sys.exit(app.exec())
