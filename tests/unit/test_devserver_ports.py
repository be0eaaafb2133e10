"""Ports for the servers tests and the demo start: distinct, free, out of the ephemeral range."""

from __future__ import annotations

import socket

from temporal_shield._devserver import _ephemeral_low, free_port, free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    for _ in range(20):
        ports = free_ports(4)
        assert len(set(ports)) == 4
        if low > 11000:
            # Where an outgoing connection cannot take them before the server binds.
            assert all(10000 <= port < low for port in ports)
        held = []
        try:
            for port in ports:
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
        finally:
            for s in held:
                s.close()


def test_a_port_in_use_is_never_handed_out() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        assert all(taken not in free_ports(8) for _ in range(50))
