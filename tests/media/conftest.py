"""Media fixtures: real encoded images and audio, and a loopback HTTP server that counts the requests it gets."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image


def encode_image(fmt: str, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    image = Image.new(mode, size, (200, 30, 60) if mode == "RGB" else 128)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def encode_wav(seconds: float = 0.25, rate: int = 8000, channels: int = 1) -> bytes:
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, np.stack([wave] * channels, axis=1), rate, format="WAV")
    return buf.getvalue()


def encode_mp4(colors: list[tuple[int, int, int]], fps: int = 8, size: tuple[int, int] = (64, 48)) -> bytes:
    """An MPEG-4 video (PyAV's built-in encoder) with one solid-colour frame per entry of `colors`."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for color in colors:
            frame = np.empty((size[1], size[0], 3), dtype=np.uint8)
            frame[:] = color
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


class MediaServer:
    """Routes: /img.png, /big (no Content-Length), /slow, /trickle, /redirect?to=..., /missing; counts hits."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.png = encode_image("PNG")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits.append(self.path)
                if self.path == "/img.png":
                    self._send(200, outer.png, "image/png")
                elif self.path == "/big":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    for _ in range(64):
                        self.wfile.write(b"x" * 1024)
                elif self.path == "/trickle":  # a byte every 0.1 s: no single read times out
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    try:
                        for _ in range(30):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.1)
                    except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
                        pass
                elif self.path == "/slow":
                    time.sleep(1.5)
                    self._send(200, outer.png, "image/png")
                elif self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(404, b"no", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def media_server() -> Iterator[MediaServer]:
    server = MediaServer()
    yield server
    server.close()
