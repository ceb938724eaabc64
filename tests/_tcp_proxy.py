"""A TCP proxy on loopback whose network can be cut: ``cut()`` stops relaying in both directions
(connections stay open and new ones are accepted by the kernel, nothing answers: what a dropped
link looks like to both ends), ``restore()`` relays again."""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class CuttableProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1", port: int = 0) -> None:
        """Relay ``port`` (0: a free one) to ``target_port``."""
        self._target = (host, target_port)
        self._listener = socket.create_server((host, port))
        self.port = int(self._listener.getsockname()[1])
        self._relaying = threading.Event()
        self._relaying.set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def cut(self) -> None:
        self._relaying.clear()

    def restore(self) -> None:
        self._relaying.set()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            if not self._relaying.is_set():
                self._relaying.wait(0.2)  # the backlog holds new connections meanwhile
                continue
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            thread = threading.Thread(target=self._relay, args=(client, upstream), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                if not self._relaying.is_set():
                    self._relaying.wait(0.2)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        self._relaying.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)
