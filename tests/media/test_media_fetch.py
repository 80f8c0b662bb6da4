"""Remote media over real HTTP on 127.0.0.1 (allowed only by the flag), with size, time and redirect limits."""

from __future__ import annotations

import time

import pytest

from chatplex.errors import InvalidRequestError
from chatplex.media import MediaPolicy, load_image

LOOPBACK = MediaPolicy(allow_private_addresses=True, fetch_timeout_s=5)


def test_fetches_an_image(media_server) -> None:
    assert load_image(media_server.url("/img.png"), "p", LOOPBACK, trusted=False).size == (8, 6)


def test_loopback_is_refused_without_the_flag_and_nothing_is_sent(media_server) -> None:
    before = len(media_server.hits)
    for url in (media_server.url("/img.png"), f"http://localhost:{media_server.port}/img.png"):
        with pytest.raises(InvalidRequestError, match="non-public address") as info:
            load_image(url, "messages[0].content[1]", trusted=False)
        assert info.value.param == "messages[0].content[1]"
    assert len(media_server.hits) == before


def test_redirects_are_followed_and_each_hop_checked(media_server) -> None:
    assert load_image(media_server.url("/redirect?to=/img.png"), "p", LOOPBACK).size == (8, 6)
    hops = MediaPolicy(allow_private_addresses=True, max_redirects=0)
    with pytest.raises(InvalidRequestError, match="more than 0 redirects"):
        load_image(media_server.url("/redirect?to=/img.png"), "p", hops)


def test_size_limit_without_content_length(media_server) -> None:
    policy = MediaPolicy(allow_private_addresses=True, max_item_bytes=10_000)
    with pytest.raises(InvalidRequestError, match="larger than 10000 bytes"):
        load_image(media_server.url("/big"), "p", policy)


def test_size_limit_from_content_length(media_server) -> None:
    policy = MediaPolicy(allow_private_addresses=True, max_item_bytes=20)
    with pytest.raises(InvalidRequestError, match="larger than 20 bytes"):
        load_image(media_server.url("/img.png"), "p", policy)


def test_timeout_and_http_errors(media_server) -> None:
    policy = MediaPolicy(allow_private_addresses=True, fetch_timeout_s=0.3)
    with pytest.raises(InvalidRequestError, match="fetching the media failed \\(ReadTimeout\\)"):
        load_image(media_server.url("/slow"), "p", policy)
    with pytest.raises(InvalidRequestError, match="HTTP 404"):
        load_image(media_server.url("/missing"), "p", LOOPBACK)


def test_time_limit_covers_the_whole_fetch(media_server) -> None:
    """A server that sends a byte at a time never trips a per-read timeout; the fetch still ends on time."""
    policy = MediaPolicy(allow_private_addresses=True, fetch_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(InvalidRequestError, match="took longer than 0.5 s"):
        load_image(media_server.url("/trickle"), "p", policy)
    assert time.monotonic() - started < 2.5  # the body alone takes 3 s


def test_remote_can_be_switched_off(media_server) -> None:
    with pytest.raises(InvalidRequestError, match="remote media URLs are not allowed"):
        load_image(media_server.url("/img.png"), "p", MediaPolicy(allow_remote=False, allow_private_addresses=True))


def test_https_media_from_a_ca_named_by_ssl_cert_file(monkeypatch) -> None:
    """A server whose certificate only a private CA vouches for (tests/fixtures/tls): refused by the default trust
    store, fetched once SSL_CERT_FILE names that CA, as OpenSSL, curl and Python itself read it."""
    import ssl
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    from tests.media.conftest import encode_image

    tls = Path(__file__).resolve().parents[1] / "fixtures" / "tls"
    png = encode_image("PNG")

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls / "localhost.crt", tls / "localhost.key")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/img.png"
    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        with pytest.raises(InvalidRequestError, match="TLS certificate is not trusted.*SSL_CERT_FILE"):
            load_image(url, "p", LOOPBACK, trusted=False)
        monkeypatch.setenv("SSL_CERT_FILE", str(tls / "localhost.crt"))
        assert load_image(url, "p", LOOPBACK, trusted=False).size == (8, 6)
    finally:
        httpd.shutdown()
        httpd.server_close()
