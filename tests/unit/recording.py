"""A Unix socket in place of the Docker daemon that records every byte it is sent (the
engine's tests and the hostile bundles' use it through DOCKER_HOST=unix://...)."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

REQUEST_LINE = re.compile(rb"^(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) (\S*) HTTP/1\.[01]\r?$", re.M)


class RecordingDaemon:
    """A Unix socket that answers like a Docker daemon that has no images and no containers
    (404 to every lookup), and records every byte each connection sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received: list[bytes] = []
        self.accepted = self.handled = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                self.answer(conn)
            self.handled += 1

    def answer(self, conn: socket.socket) -> None:
        data = b""
        conn.settimeout(5)
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        line = data.split(b"\r\n", 1)[0].decode(errors="replace")
        path = line.split(" ")[1] if line.count(" ") >= 2 else ""
        if path.endswith("/version"):
            status, body = "200 OK", {"ApiVersion": "1.41", "Version": "20.10.24", "MinAPIVersion": "1.12"}
        elif path.endswith("/info"):
            status, body = "200 OK", {"DockerRootDir": "", "Runtimes": {"runc": {}}}
        elif path.endswith("/_ping"):
            status, body = "200 OK", None
        else:
            status, body = "404 Not Found", {"message": "No such image or container"}
        payload = json.dumps(body).encode() if body is not None else b"OK"
        head = f"HTTP/1.1 {status}\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode() + payload)
        # whatever else the client wrote on this connection (a smuggled second request) is kept too
        conn.settimeout(0.05)
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except OSError:
            pass
        self.received.append(data)

    def settle(self, timeout: float = 10) -> None:
        """Wait until every connection accepted so far is answered and recorded."""
        import time

        deadline = time.monotonic() + timeout
        while self.handled < self.accepted and time.monotonic() < deadline:
            time.sleep(0.01)

    def clear(self) -> None:
        self.settle()
        self.received.clear()

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request line received, in order (once all are in)."""
        self.settle()
        return [(m.decode(), p.decode()) for data in self.received for m, p in REQUEST_LINE.findall(data)]

    def close(self) -> None:
        self.server.close()
