"""`taishi dashboards export|install` against a stand-in Kibana import API on loopback."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from taishi.dashboards import cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taishi")
    p.add_argument("--config")
    cli.register(p.add_subparsers(dest="cmd", required=True))
    return p


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return int(args.func(args))


class _FakeKibana(BaseHTTPRequestHandler):
    """Answers like Kibana's saved-objects import API; records what it received."""

    received: list[dict[str, Any]] = []  # noqa: RUF012
    answer: tuple[int, dict[str, Any]] = (200, {})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        )
        status, answer = type(self).answer
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def kibana() -> Iterator[type[_FakeKibana]]:
    handler = type("Handler", (_FakeKibana,), {"received": [], "answer": (200, {})})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


def test_export_writes_one_saved_object_a_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TAISHI_CONFIG", raising=False)
    out = tmp_path / "taishi.ndjson"
    assert _run("dashboards", "export", "--out", str(out), "--institution", "bank-a") == 0
    objs = [json.loads(line) for line in out.read_text().splitlines()]
    titles = {o["attributes"]["title"] for o in objs if o["type"] == "dashboard"}
    assert "Taishi · Institution bank-a" in titles and "Taishi · Sector overview" in titles


def test_install_posts_multipart_with_xsrf_header_to_the_space(kibana, monkeypatch):
    monkeypatch.delenv("TAISHI_CONFIG", raising=False)
    monkeypatch.setenv("TAISHI_KIBANA__API_KEY", "k3y")
    kibana.answer = (200, {"success": True, "successCount": 28, "errors": []})
    assert _run("dashboards", "install", "--kibana", kibana.url, "--space", "soc") == 0
    (req,) = kibana.received
    assert req["path"] == "/s/soc/api/saved_objects/_import?overwrite=true"
    assert req["headers"]["kbn-xsrf"] and req["headers"]["authorization"] == "ApiKey k3y"
    ctype = req["headers"]["content-type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    boundary = ctype.split("boundary=", 1)[1].encode()
    assert req["body"].startswith(b"--" + boundary + b"\r\n") and req["body"].endswith(
        b"--" + boundary + b"--\r\n"
    )
    assert b'name="file"; filename="taishi-dashboards.ndjson"' in req["body"]
    assert b'"type":"dashboard"' in req["body"]


def test_install_reports_objects_kibana_refused(kibana, capsys):
    kibana.answer = (
        200,
        {
            "success": False,
            "successCount": 2,
            "errors": [
                {
                    "id": "abc",
                    "type": "lens",
                    "title": "Severity",
                    "error": {
                        "type": "missing_references",
                        "references": [{"type": "index-pattern", "id": "x"}],
                    },
                }
            ],
        },
    )
    with pytest.raises(
        cli.KibanaImportError, match=r"lens/abc \(Severity\): missing references index-pattern/x"
    ):
        cli.install(kibana.url, "{}\n")


def test_install_explains_http_errors_and_unreachable_kibana(kibana, capsys, monkeypatch):
    monkeypatch.delenv("TAISHI_CONFIG", raising=False)
    kibana.answer = (401, {"statusCode": 401, "error": "Unauthorized", "message": "missing credentials"})
    assert _run("dashboards", "install", "--kibana", kibana.url, "--no-configured") == 1
    err = capsys.readouterr().err
    assert "HTTP 401 Unauthorized: missing credentials" in err and "TAISHI_KIBANA__API_KEY" in err

    with pytest.raises(cli.KibanaImportError, match=r"cannot reach Kibana at http://127\.0\.0\.1:9"):
        cli.install("http://127.0.0.1:9", "{}\n", timeout=5)


@pytest.mark.parametrize(
    "url, space, message",
    [("127.0.0.1:5601", None, "http"), ("http://127.0.0.1:5601", "Bad Space", "space id")],
)
def test_bad_kibana_arguments_are_named(url, space, message):
    with pytest.raises(ValueError, match=message):
        cli.import_url(url, space)
