"""``taishi dashboards export|install``: the Kibana saved objects as a file, or imported into a Kibana.

The installer uses Kibana's saved-objects import API (``POST /api/saved_objects/_import?overwrite=true``,
multipart, ``kbn-xsrf`` header) with the standard library only. Credentials come from the environment:
``TAISHI_KIBANA__API_KEY``, or ``TAISHI_KIBANA__USERNAME`` and ``TAISHI_KIBANA__PASSWORD``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

_SPACE_RE = re.compile(r"^[a-z0-9_-]+$")


class KibanaImportError(RuntimeError):
    """The saved objects could not be imported; the message says where and why."""


def _dashboards(args: argparse.Namespace) -> list[Any]:
    from taishi.dashboards.panels import all_dashboards

    institutions = list(args.institution or [])
    if not args.no_configured:
        from taishi.pipeline.config import Settings

        institutions += [i.id for i in Settings.load(getattr(args, "config", None)).institutions]
    return all_dashboards(institutions, args.entity or [])


def export_ndjson(args: argparse.Namespace) -> str:
    """The NDJSON of the dashboards the arguments ask for."""
    from taishi.dashboards.kibana import saved_objects, to_ndjson

    return to_ndjson(saved_objects(_dashboards(args)))


def cmd_export(args: argparse.Namespace) -> int:
    """Write the Kibana saved objects (data views, Lens visualizations, dashboards) as NDJSON."""
    text = export_ndjson(args)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"{text.count(chr(10))} saved objects -> {args.out}", file=sys.stderr)
    return 0


def _auth_header() -> dict[str, str]:
    key = os.environ.get("TAISHI_KIBANA__API_KEY")
    if key:
        return {"Authorization": f"ApiKey {key}"}
    user, password = os.environ.get("TAISHI_KIBANA__USERNAME"), os.environ.get("TAISHI_KIBANA__PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def import_url(kibana: str, space: str | None = None) -> str:
    """The import endpoint of a Kibana (and space) with overwrite on."""
    if not re.match(r"^https?://[^/]+", kibana):
        raise ValueError(f"--kibana {kibana!r}: expected an http(s) URL such as http://127.0.0.1:5601")
    if space is not None and not _SPACE_RE.match(space):
        raise ValueError(
            f"--space {space!r}: expected a Kibana space id (lower-case letters, digits, _ and -)"
        )
    base = kibana.rstrip("/")
    prefix = f"/s/{space}" if space and space != "default" else ""
    return f"{base}{prefix}/api/saved_objects/_import?overwrite=true"


def install(kibana: str, ndjson: str, *, space: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Import NDJSON saved objects into Kibana; returns Kibana's answer, raises KibanaImportError."""
    url = import_url(kibana, space)
    boundary = f"taishi-{uuid.uuid4().hex}"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="taishi-dashboards.ndjson"\r\n'
            "Content-Type: application/ndjson\r\n\r\n"
        ).encode()
        + ndjson.encode()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {
        "kbn-xsrf": "taishi",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        **_auth_header(),
    }
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise KibanaImportError(_http_error(url, exc)) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KibanaImportError(f"cannot reach Kibana at {kibana}: {reason}") from None
    try:
        answer: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise KibanaImportError(f"{url} answered something other than JSON: {raw[:200]!r}") from None
    if not answer.get("success", False):
        raise KibanaImportError(_import_errors(answer))
    return answer


def _http_error(url: str, exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        detail = json.loads(raw)
        message = f"{detail.get('error', exc.reason)}: {detail.get('message', '')}".rstrip(": ")
    except ValueError:
        message = raw[:200].decode(errors="replace") or str(exc.reason)
    hint = {
        401: " (set TAISHI_KIBANA__API_KEY, or TAISHI_KIBANA__USERNAME and TAISHI_KIBANA__PASSWORD)",
        403: " (the user may not import saved objects into this space)",
        404: " (is this Kibana, and does the space exist?)",
        415: " (the import API expects multipart/form-data)",
    }.get(exc.code, "")
    return f"Kibana refused the import at {url}: HTTP {exc.code} {message}{hint}"


def _import_errors(answer: dict[str, Any]) -> str:
    errors = answer.get("errors") or []
    lines = [f"Kibana imported {answer.get('successCount', 0)} objects; {len(errors)} failed:"]
    for e in errors[:20]:
        err = e.get("error", {})
        detail = err.get("message") or err.get("type", "unknown error")
        if err.get("type") == "missing_references":
            refs = ", ".join(f"{r.get('type')}/{r.get('id')}" for r in err.get("references", []))
            detail = f"missing references {refs}"
        lines.append(
            f"  {e.get('type')}/{e.get('id')} ({e.get('title', e.get('meta', {}).get('title', ''))}): {detail}"
        )
    return "\n".join(lines)


def cmd_install(args: argparse.Namespace) -> int:
    """Import the saved objects into a Kibana (overwriting what an earlier install created)."""
    ndjson = Path(args.file).read_text(encoding="utf-8") if args.file else export_ndjson(args)
    try:
        answer = install(args.kibana, ndjson, space=args.space, timeout=args.timeout)
    except KibanaImportError as exc:
        print(f"taishi dashboards install: {exc}", file=sys.stderr)
        return 1
    print(f"imported {answer.get('successCount', 0)} saved objects into {args.kibana}")
    return 0


def _selection_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--institution",
        action="append",
        metavar="ID",
        help="also a drill-down for this institution (repeatable; configured institutions are added)",
    )
    sp.add_argument(
        "--entity",
        action="append",
        metavar="ORG|IP",
        help="also a behaviour timeline for this entity, as in taishi.entity.id (repeatable)",
    )
    sp.add_argument(
        "--no-configured", action="store_true", help="no drill-downs for the institutions of the config"
    )


def register(sub: Any) -> None:
    """Add ``dashboards export|install`` to the main parser's subcommands."""
    p = sub.add_parser("dashboards", help="Kibana dashboards as code: export or install the saved objects")
    dsub = p.add_subparsers(dest="dashboards_cmd", required=True)

    sp = dsub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__)
    sp.add_argument("--out", required=True, metavar="FILE", help="NDJSON file to write ('-' for stdout)")
    _selection_args(sp)
    sp.set_defaults(func=cmd_export)

    sp = dsub.add_parser("install", help=cmd_install.__doc__, description=cmd_install.__doc__)
    sp.add_argument("--kibana", required=True, metavar="URL", help="e.g. http://127.0.0.1:5601")
    sp.add_argument("--space", default=None, metavar="ID", help="Kibana space (default: the default space)")
    sp.add_argument("--file", default=None, help="import this NDJSON instead of generating it")
    sp.add_argument("--timeout", type=float, default=60.0, metavar="S")
    _selection_args(sp)
    sp.set_defaults(func=cmd_install)
