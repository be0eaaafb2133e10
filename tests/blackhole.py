"""A real hung endpoint on 127.0.0.1: accepts TCP connections and never answers.

Optionally it first relays to a working endpoint (moto) and goes silent on
:meth:`Blackhole.hang`, so that a service can start normally and then hang
mid-life, on new and on already pooled (keep-alive) connections alike.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class Blackhole:
    """A TCP listener that swallows requests; a relay to ``target`` until :meth:`hang`.

    Use as a context manager; :attr:`url` is ``http://127.0.0.1:PORT``.
    """

    def __init__(self, target: tuple[str, int] | None = None) -> None:
        """Listen on a free loopback port.

        Args:
            target: ``(host, port)`` to relay to until :meth:`hang`; ``None``
                hangs from the start.
        """
        self._target = target
        self._hung = threading.Event()
        if target is None:
            self._hung.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def hang(self) -> None:
        """From now on nothing is forwarded in either direction; connections stay open."""
        self._hung.set()

    def __enter__(self) -> Blackhole:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._thread.join(timeout=5)

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._keep(client)
            if self._target is None or self._hung.is_set():
                continue  # held open, never read from or answered
            upstream = socket.create_connection(self._target)
            self._keep(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self._hung.is_set():
                    dst.sendall(data)
