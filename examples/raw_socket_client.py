"""The wire protocol by hand, with nothing but the standard library: what a client in
any language does. Run a broker first (`message-broker`), then this script.

    python examples/raw_socket_client.py [--port PORT]      (default 15234)
"""

import argparse
import json
import socket
import struct


def send(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message).encode("utf-8")
    sock.sendall(struct.pack(">I", len(body)) + body)  # length in bytes, big-endian


def receive(sock: socket.socket) -> dict:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    (length,) = struct.unpack(">I", exactly(4))
    return json.loads(exactly(length))


# Notifications (delivered messages) that arrived while waiting for a response.
inbox: list[dict] = []


def call(sock: socket.socket, id: int, method: str, params: dict | None = None) -> dict:
    send(sock, {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": id})
    while True:
        frame = receive(sock)
        if "method" not in frame and frame.get("id") == id:
            return frame
        inbox.append(frame)


def next_message(sock: socket.socket) -> dict:
    return inbox.pop(0) if inbox else receive(sock)


def main() -> None:
    parser = argparse.ArgumentParser(description="Speaks the wire protocol by hand.")
    parser.add_argument("--port", type=int, default=15234, help="the broker's port (default 15234)")
    port = parser.parse_args().port
    with socket.create_connection(("localhost", port)) as sock:
        print(call(sock, 1, "connect", {"client_id": "raw-example"}))
        print(call(sock, 2, "subscribe", {"patterns": ["example.*"]}))
        print(call(sock, 3, "publish", {"topic": "example.hello", "payload": {"text": "hi"}}))
        # Our own subscription matches, so the message comes back to us too.
        print("delivered:", next_message(sock))
        print(call(sock, 4, "disconnect"))


if __name__ == "__main__":
    main()
