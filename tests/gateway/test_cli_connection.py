"""The `removai` CLI says what is wrong when it cannot talk to the gateway: a URL without a scheme (before
anything is sent), HTTPS spoken to a plain-HTTP server, an HTTPS server whose certificate is not trusted, a name
that does not resolve (under the reserved `.invalid`, answered without a DNS query), nothing listening. Every
server here is real and on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from removai_cli.__main__ import run
from tests.gateway.harness import serve
from tests.gateway.test_cli import PHOTO, ScriptedApi, _remove_via
from tools.triton_launcher import free_port


class Recorder:
    """A plain-HTTP server that answers every request 404 and counts the requests and connections it got."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0

    def app(self) -> web.Application:
        async def anything(request: web.Request) -> web.Response:
            self.requests += 1
            raise web.HTTPNotFound()

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", anything)
        return app


@pytest_asyncio.fixture
async def plain_http() -> AsyncIterator[Recorder]:
    """A real plain-HTTP server on 127.0.0.1 that records what reaches it."""
    recorder = Recorder()
    async with serve(recorder.app()) as port:
        recorder.port = port
        yield recorder


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[ScriptedApi]:
    """The CLI tests' scripted gateway (test_cli.py), on 127.0.0.1."""
    api = ScriptedApi()
    async with serve(api.app()) as port:
        api.port = port
        yield api


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(PHOTO)
    return path


async def remove_with_url(url: str, photo: Path, tmp_path: Path) -> int:
    return await run(["remove", str(photo), "--api-key", "rmv_test", "--url", url, "--no-progress",
                      "--out", str(tmp_path / "out"), "--timeout", "20"])


async def test_a_url_without_a_scheme_says_add_http_and_sends_nothing(
    plain_http: Recorder, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--url 127.0.0.1:PORT` (the usual slip) exits 2 with "add http://" and the URL to type; `ftp://` and a URL
    without a host are named as such; the server at that port hears nothing."""
    bare = f"127.0.0.1:{plain_http.port}"
    cases = [
        (bare, f"the gateway URL '{bare}' has no scheme: add http:// (http://{bare}) or https://"),
        (f"localhost:{plain_http.port}/v1",
         (f"the gateway URL 'localhost:{plain_http.port}/v1' has no scheme: add http:// "
         f"(http://localhost:{plain_http.port}/v1) or https://")),
        (f"ftp://{bare}", f"the gateway URL 'ftp://{bare}' must start with http:// or https://, not ftp://"),
        ("http://", "the gateway URL 'http://' names no host: e.g. http://127.0.0.1:8080"),
    ]
    for url, message in cases:
        assert await remove_with_url(url, photo, tmp_path) == 2, url
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", f"removai: error: {message}\n"), url
    assert plain_http.requests == 0
    assert not (tmp_path / "out").exists()


async def test_https_to_a_plain_http_server_names_the_tls_mismatch(
    plain_http: Recorder, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """https:// at a server that speaks plain HTTP: the TLS handshake failed, the server does not speak HTTPS,
    try http:// at the same address; not "is it running?"."""
    where = f"https://127.0.0.1:{plain_http.port}"

    assert await remove_with_url(where, photo, tmp_path) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(
        rf"removai: error: cannot reach the gateway at {re.escape(where)}: the TLS handshake failed \([A-Z_]+\); "
        rf"the server there does not speak HTTPS: try http://127\.0\.0\.1:{plain_http.port}\n", captured.err
    ), captured.err
    assert plain_http.requests == 0


def self_signed(folder: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1 (no CA the client trusts)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


async def test_an_untrusted_certificate_is_named_as_such(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An HTTPS server with a self-signed certificate: "its TLS certificate is not trusted (self-signed
    certificate)", with where a private CA goes; nothing is sent over the refused connection."""
    recorder = Recorder()
    runner = web.AppRunner(recorder.app())
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=self_signed(tmp_path))
    await site.start()
    try:
        where = f"https://127.0.0.1:{port}"
        assert await remove_with_url(where, photo, tmp_path) == 2
    finally:
        await runner.cleanup()

    captured = capsys.readouterr()
    assert captured.err == (
        f"removai: error: cannot reach the gateway at {where}: its TLS certificate is not trusted (self-signed "
        "certificate); a private CA's certificate goes in SSL_CERT_FILE\n"
    )
    assert recorder.requests == 0


async def test_a_name_that_does_not_resolve_is_named(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway name under `.invalid` (RFC 6761: never resolves; the CLI answers it without asking DNS): "the
    name ... does not resolve", not "is it running?"."""
    where = "http://gateway.example.invalid:8080"

    assert await remove_with_url(where, photo, tmp_path) == 2

    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", (
        f"removai: error: cannot reach the gateway at {where}: the name gateway.example.invalid does not resolve "
        "(check the spelling, or this machine's DNS)\n"
    ))


async def test_an_output_link_on_a_host_that_does_not_resolve_fails_that_file_only(
    scripted: ScriptedApi, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gateway answers with an output_url on a name that does not resolve: the file fails with the name
    named (a connection_error), the run ends with exit 1 and the summary."""
    scripted.output_base = "http://files.example.invalid"

    status = await _remove_via(scripted, str(photo), tmp_path / "out", "--max-attempts", "1")

    assert status == 1
    assert capsys.readouterr().out.splitlines() == [
        (f"failed  {photo}: connection_error: cannot reach the gateway at http://files.example.invalid: the name "
        "files.example.invalid does not resolve (check the spelling, or this machine's DNS)"),
        "0 succeeded, 1 failed",
    ]


async def test_nothing_listening_says_connection_refused(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port where nothing listens: "connection refused, nothing listens there (is it running?)"."""
    where = f"http://127.0.0.1:{free_port()}"

    assert await remove_with_url(where, photo, tmp_path) == 2

    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", (
        f"removai: error: cannot reach the gateway at {where}: connection refused, nothing listens there "
        "(is it running?)\n"
    ))
