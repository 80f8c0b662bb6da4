"""A media source -> raw bytes: data URLs, http(s) URLs (size- and time-limited, SSRF-guarded), local paths."""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatplex.errors import InvalidRequestError
from chatplex.media import ssrf
from chatplex.media.policy import MediaPolicy

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class Blob:
    data: bytes
    mime: str | None  # from the data URL or the Content-Type header, when known


def _too_big(param: str, policy: MediaPolicy) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: the media is larger than {policy.max_item_bytes} bytes.", param=param)


def check_size(data: bytes, param: str, policy: MediaPolicy) -> bytes:
    if len(data) > policy.max_item_bytes:
        raise _too_big(param, policy)
    return data


def parse_data_url(url: str, param: str, policy: MediaPolicy) -> Blob:
    """`data:[<mime>][;base64],<payload>` -> its bytes and mime type."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise InvalidRequestError(f"{param}: a data URL needs a ',' before its payload.", param=param)
    fields = header.split(";")
    mime = fields[0].strip().lower() or None
    # base64 grows 4/3: refuse oversized payloads before decoding them.
    if len(payload) * 3 // 4 > policy.max_item_bytes + 3:
        raise _too_big(param, policy)
    if "base64" in (f.strip().lower() for f in fields[1:]):
        try:
            data = base64.b64decode(payload.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError(f"{param}: the data URL's base64 payload is not valid.", param=param) from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return Blob(check_size(data, param, policy), mime)


def read_local(path: str, param: str, policy: MediaPolicy, trusted: bool) -> Blob:
    """Read a local file: any path for the caller's own (`trusted`) arguments, else only under local_root."""
    real = os.path.realpath(os.path.expanduser(path))
    if not trusted:
        root = policy.local_root
        if root is None:
            raise InvalidRequestError(f"{param}: local file paths are not allowed in requests.", param=param)
        if os.path.commonpath([root, real]) != root:
            raise InvalidRequestError(f"{param}: the path is outside the allowed media directory.", param=param)
    try:
        size = os.path.getsize(real)
        if size > policy.max_item_bytes:
            raise _too_big(param, policy)
        with open(real, "rb") as f:
            return Blob(f.read(policy.max_item_bytes + 1), None)
    except OSError as e:
        raise InvalidRequestError(f"{param}: cannot read {path!r} ({e.strerror or e}).", param=param) from None


def fetch_url(url: str, param: str, policy: MediaPolicy) -> Blob:
    """GET an http(s) URL under the policy's time and size limits, following a few redirects, each checked."""
    import httpx

    if not policy.allow_remote:
        raise InvalidRequestError(f"{param}: remote media URLs are not allowed here.", param=param)
    # httpx's timeout bounds each read; the deadline bounds the whole fetch (a server may trickle bytes).
    deadline = time.monotonic() + policy.fetch_timeout_s
    # trust_env off: a proxy from the environment would resolve the host itself, past the address check.
    with httpx.Client(
        timeout=policy.fetch_timeout_s, follow_redirects=False, trust_env=False, verify=_trusted_cas()
    ) as client:
        for _ in range(policy.max_redirects + 1):
            request = _pinned_request(client, url, param, policy)
            try:
                response = client.send(request, stream=True)
            except httpx.HTTPError as e:
                if "CERTIFICATE_VERIFY_FAILED" in str(e):
                    raise InvalidRequestError(
                        f"{param}: the media server's TLS certificate is not trusted here; where a private CA signs "
                        "it, start chatplex with SSL_CERT_FILE naming that CA's certificate.",
                        param=param,
                    ) from None
                raise InvalidRequestError(
                    f"{param}: fetching the media failed ({type(e).__name__}).", param=param
                ) from None
            try:
                if response.is_redirect:
                    url = urllib.parse.urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise InvalidRequestError(
                        f"{param}: fetching the media gave HTTP {response.status_code}.", param=param
                    )
                return Blob(_read_limited(response, param, policy, deadline), response.headers.get("content-type"))
            except httpx.HTTPError as e:
                raise InvalidRequestError(
                    f"{param}: fetching the media failed ({type(e).__name__}).", param=param
                ) from None
            finally:
                response.close()
    raise InvalidRequestError(f"{param}: more than {policy.max_redirects} redirects.", param=param)


def _trusted_cas() -> ssl.SSLContext | bool:
    """The certificate authorities HTTPS media must be signed by: those of SSL_CERT_FILE / SSL_CERT_DIR where set
    (as OpenSSL, curl and Python read them: a private CA, a TLS-inspecting proxy's), else httpx's certifi bundle."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if not (cafile or capath):
        return True
    return ssl.create_default_context(cafile=cafile or None, capath=capath or None)


def _pinned_request(client: httpx.Client, url: str, param: str, policy: MediaPolicy) -> httpx.Request:
    """A request sent to the address that passed the check (so a second DNS answer cannot differ), with the
    original Host header and TLS server name."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(f"{param}: only http(s) URLs can be fetched.", param=param)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = ssrf.resolve(parts.hostname, port, param)
    ssrf.check_addresses(addresses, parts.hostname, param, policy.allow_private_addresses)
    ip = addresses[0]
    netloc = f"[{ip}]" if ip.version == 6 else str(ip)
    pinned = parts._replace(netloc=f"{netloc}:{port}").geturl()
    host = parts.netloc.rpartition("@")[2]
    return client.build_request("GET", pinned, headers={"Host": host}, extensions={"sni_hostname": parts.hostname})


def _read_limited(response: httpx.Response, param: str, policy: MediaPolicy, deadline: float) -> bytes:
    length = response.headers.get("content-length")
    if length and length.isdigit() and int(length) > policy.max_item_bytes:
        raise _too_big(param, policy)
    chunks, total = [], 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > policy.max_item_bytes:
            raise _too_big(param, policy)
        if time.monotonic() > deadline:
            raise InvalidRequestError(
                f"{param}: fetching the media took longer than {policy.fetch_timeout_s:g} s.", param=param
            )
        chunks.append(chunk)
    return b"".join(chunks)


def load_source(source: str | bytes, param: str, policy: MediaPolicy, trusted: bool) -> Blob:
    """Bytes from raw bytes, a data URL, an http(s) URL, a file:// URL or a local path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return Blob(check_size(bytes(source), param, policy), None)
    if not isinstance(source, str) or not source:
        raise InvalidRequestError(
            f"{param}: expected a URL, a path or bytes, got {type(source).__name__}.", param=param
        )
    lowered = source[:8].lower()
    if lowered.startswith("data:"):
        return parse_data_url(source, param, policy)
    if lowered.startswith(("http://", "https://")):
        return fetch_url(source, param, policy)
    if lowered.startswith("file://"):
        return read_local(urllib.parse.unquote(urllib.parse.urlsplit(source).path), param, policy, trusted)
    if "://" in source[:16]:
        raise InvalidRequestError(f"{param}: unsupported URL scheme; use data:, http(s):// or a path.", param=param)
    return read_local(source, param, policy, trusted)
