"""A TCP proxy in front of a broker (the machine's RabbitMQ unless told) that a test can
misdirect.

Modes for new connections: ``forward`` (to the broker), ``refuse`` (closed at
once) and ``hold`` (accepted, then left unanswered until the mode is
``forward`` again, when they are forwarded: a connection attempt caught
mid-handshake). :meth:`drop` cuts every forwarded connection, as a network
failure would; :meth:`cut_when_client_sends` cuts one at a chosen moment of its
conversation.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading


class Proxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._mode = "forward"
        self._changed = threading.Condition()
        self._held: list[socket.socket] = []
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.refused = 0
        #: Connections accepted, in any mode.
        self.accepted = 0
        self._cut_on: bytes | None = None
        self.cut = 0
        threading.Thread(target=self._accept, name="test-proxy", daemon=True).start()

    # -- what tests call --------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        with self._changed:
            self._mode = mode
            held, self._held = (self._held, []) if mode == "forward" else ([], self._held)
        for client in held:
            self._forward(client)

    def drop(self) -> None:
        """Cut every forwarded connection."""
        with self._changed:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def outage(self) -> None:
        """The broker becomes unreachable: forwarded connections are cut, new ones
        refused (until the mode is ``forward`` again)."""
        self.set_mode("refuse")
        self.drop()

    def cut_when_client_sends(self, data: bytes) -> None:
        """Once: the first forwarded connection whose client sends ``data`` (within one
        read) is cut there, before the broker sees it."""
        with self._changed:
            self._cut_on = data

    def wait(self, condition, timeout: float = 30) -> bool:
        """Wait until ``condition(proxy)`` holds (re-checked on every change)."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def forwarded(self) -> int:
        return len(self._pairs)

    def clients_open(self) -> int:
        """How many sockets of this process are connected to the proxy: its clients'
        ends (the proxy's own ends are connected from it), open until their owner closes
        them, whatever the proxy did with them."""
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # (closed meanwhile)
                inodes.add(os.readlink(f"/proc/self/fd/{fd}").removeprefix("socket:["))
        count = 0
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            with open(table) as rows:
                next(rows)  # the header
                for row in rows:
                    columns = row.split()
                    remote_port = int(columns[2].rsplit(":", 1)[1], 16)
                    if remote_port == self.port and f"{columns[9]}]" in inodes:
                        count += 1
        return count

    def close(self) -> None:
        self._listener.close()
        self.drop()
        for client in self._held:
            client.close()

    # -- inside -------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._changed:
                mode = self._mode
                self.accepted += 1
                if mode == "hold":
                    self._held.append(client)
                elif mode == "refuse":
                    self.refused += 1
                self._changed.notify_all()
            if mode == "refuse":
                client.close()
            elif mode == "forward":
                self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        pair = (client, upstream)
        with self._changed:
            self._pairs.append(pair)
            self._changed.notify_all()
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(
                target=self._pump, args=(source, sink, pair), name="test-proxy-pump", daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair) -> None:
        try:
            while (data := source.recv(65536)) and not (source is pair[0] and self._cuts(data)):
                sink.sendall(data)
        except OSError:
            pass
        for end in pair:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        with self._changed:
            if pair in self._pairs:
                self._pairs.remove(pair)
            self._changed.notify_all()

    def _cuts(self, data: bytes) -> bool:
        with self._changed:
            if self._cut_on is None or self._cut_on not in data:
                return False
            self._cut_on = None
            self.cut += 1
            self._changed.notify_all()
            return True
