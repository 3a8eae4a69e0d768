"""free_port: a port a server can bind seconds later, one Ray's own processes do not take meanwhile."""

from __future__ import annotations

import socket

from polyray.http import RAY_WORKER_PORTS, _ephemeral_ports, free_port


def test_free_port_is_bindable_and_outside_the_ranges_ray_binds():
    low, high = _ephemeral_ports()
    ports = {free_port() for _ in range(20)}
    for port in ports:
        assert not low <= port <= high, (port, low, high)  # what port 0 (and so Ray's gRPC servers) gets
        assert not RAY_WORKER_PORTS[0] <= port <= RAY_WORKER_PORTS[1], port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    assert len(ports) > 1  # drawn at random: concurrent callers rarely collide


def test_a_taken_port_is_never_handed_out(monkeypatch):
    from polyray import http

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        monkeypatch.setattr(http, "_ephemeral_ports", lambda: (1, 0))  # an empty range: every port a candidate
        monkeypatch.setattr(http, "RAY_WORKER_PORTS", (1, 0))
        monkeypatch.setattr(
            http.random.SystemRandom, "sample", lambda self, seq, k: [taken, *[p for p in seq if p != taken][: k - 1]]
        )
        assert free_port() != taken
