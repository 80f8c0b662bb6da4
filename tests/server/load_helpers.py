"""Helpers of the load and drain tests: a long request, /metrics readings, held-open streams and bare-socket
requests a test can walk away from."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx

LONG = {"prompt": "Once upon a time", "max_tokens": 8000, "ignore_eos": True, "stream": True, "temperature": 0}


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class OpenStream:
    """A streaming completion held open after its first event."""

    def __init__(self, client: httpx.Client, body: dict) -> None:
        self._cm = client.stream("POST", "/v1/completions", json=body)
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self.lines = self.response.iter_lines()
        self.first = next(line for line in self.lines if line.startswith("data: "))

    def events(self) -> list[dict]:
        out = []
        for line in self.lines:
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
        return out

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def send_raw(url: str, body: dict) -> socket.socket:
    """A non-streaming request on a bare socket, so the test can leave without reading the reply."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock
