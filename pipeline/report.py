"""A self-contained HTML situation report: no scripts, no fonts, no network — opens anywhere.

Alerts over time by technique, techniques, top attacker sources, institutions, incidents with their
evidence, and the busiest entities. Used by ``taishi analyze --report`` and ``taishi demo``.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson

_SEV_COLOR = {"critical": "#b71c1c", "high": "#e65100", "medium": "#f9a825", "low": "#607d8b"}
_PALETTE = [
    "#1565c0",
    "#2e7d32",
    "#6a1b9a",
    "#c62828",
    "#00838f",
    "#ef6c00",
    "#4e342e",
    "#ad1457",
    "#283593",
    "#558b2f",
    "#00695c",
    "#8e24aa",
]
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f4f6f8;color:#1c2833}
header{background:#0d2137;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b0bec5;font-size:13px}main{padding:20px 28px;max-width:1300px}
.cards{display:flex;gap:14px;flex-wrap:wrap}.card{background:#fff;border-radius:8px;padding:12px 18px;
min-width:150px;box-shadow:0 1px 2px rgba(0,0,0,.08)}.card b{display:block;font-size:26px}
.card span{color:#607d8b;font-size:12px;text-transform:uppercase}section{background:#fff;border-radius:8px;
padding:14px 18px;margin-top:16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}h2{font-size:16px;margin:0 0 10px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:5px 8px;
border-bottom:1px solid #eceff1;vertical-align:top}th{color:#546e7a;font-weight:600}td.num{text-align:right}
.sev{color:#fff;border-radius:4px;padding:1px 6px;font-size:11px}details summary{cursor:pointer}
pre{background:#f7f9fa;padding:6px;font-size:11px;white-space:pre-wrap;margin:4px 0}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:10px;
height:10px;margin-right:4px;border-radius:2px}.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.empty{color:#78909c;font-style:italic}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _timeline(alerts: list[dict[str, Any]], width: int = 1200, height: int = 180) -> str:
    if not alerts:
        return '<p class="empty">No alerts.</p>'
    times = [_ms(a["event"]["start"]) for a in alerts]
    lo, hi = min(times), max(times)
    span = max(hi - lo, 60_000)
    buckets = 48
    step = span / buckets
    techs = sorted({a["threat"]["technique"]["id"][0] for a in alerts})
    color = {t: _PALETTE[i % len(_PALETTE)] for i, t in enumerate(techs)}
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for a, t in zip(alerts, times, strict=True):
        counts[min(buckets - 1, int((t - lo) / step))][a["threat"]["technique"]["id"][0]] += 1
    peak = max(sum(c.values()) for c in counts.values())
    bw = (width - 60) / buckets
    bars = []
    for b in range(buckets):
        y = float(height - 20)
        for tech in techs:
            n = counts[b][tech]
            if not n:
                continue
            h = (height - 30) * n / peak
            y -= h
            bars.append(
                f'<rect x="{50 + b * bw:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                f'fill="{color[tech]}"><title>{_e(tech)}: {n}</title></rect>'
            )
    fmt = "%Y-%m-%d %H:%M"
    axis = (
        f'<text x="50" y="{height - 4}" font-size="11">{datetime.fromtimestamp(lo / 1000, UTC).strftime(fmt)}</text>'
        f'<text x="{width - 10}" y="{height - 4}" font-size="11" text-anchor="end">'
        f"{datetime.fromtimestamp(hi / 1000, UTC).strftime(fmt)} UTC</text>"
        f'<text x="44" y="14" font-size="11" text-anchor="end">{peak}</text>'
        f'<line x1="48" y1="{height - 20}" x2="{width - 8}" y2="{height - 20}" stroke="#90a4ae"/>'
    )
    legend = "".join(f'<span><i style="background:{color[t]}"></i>{_e(t)}</span>' for t in techs)
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="alerts over time">'
        f'{"".join(bars)}{axis}</svg><div class="legend">{legend}</div>'
    )


def _table(headers: list[str], rows: list[list[Any]], num: set[int] | None = None) -> str:
    if not rows:
        return '<p class="empty">Nothing to show.</p>'
    num = num or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(
    alerts: list[dict[str, Any]], entities: list[dict[str, Any]], title: str, subtitle: str = ""
) -> str:
    """The report as one HTML string."""
    sev = Counter(a["taishi"]["alert"]["severity"] for a in alerts)
    orgs = sorted({a["organization"]["id"] for a in alerts} | {e["organization"]["id"] for e in entities})
    cards = [
        ("incidents", len(alerts)),
        ("critical", sev["critical"]),
        ("high", sev["high"]),
        ("institutions", len(orgs)),
        ("entity windows", len(entities)),
    ]
    cards_html = "".join(f'<div class="card"><b>{v:,}</b><span>{_e(k)}</span></div>' for k, v in cards)

    by_tech: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in alerts:
        by_tech[a["threat"]["technique"]["id"][0]].append(a)
    tech_rows = [
        [
            _e(t),
            _e(v[0]["taishi"]["alert"]["technique_name"]),
            _e(v[0]["threat"]["tactic"]["name"][0]),
            len(v),
            len({a["organization"]["id"] for a in v}),
        ]
        for t, v in sorted(by_tech.items(), key=lambda kv: -len(kv[1]))
    ]

    src_score: dict[str, list[float]] = defaultdict(list)
    src_orgs: dict[str, set[str]] = defaultdict(set)
    for a in alerts:
        ip = a.get("source", {}).get("ip") or a["taishi"]["entity"]["ip"]
        src_score[ip].append(a["event"]["risk_score"])
        src_orgs[ip].add(a["organization"]["id"])
    top_src = sorted(src_score, key=lambda ip: (-len(src_orgs[ip]), -max(src_score[ip]), ip))[:15]
    src_rows = [
        [
            _e(ip),
            len(src_score[ip]),
            len(src_orgs[ip]),
            f"{max(src_score[ip]):.0f}",
            _e(", ".join(sorted(src_orgs[ip]))),
        ]
        for ip in top_src
    ]

    org_rows: list[list[Any]] = []
    for o in orgs:
        mine = [a for a in alerts if a["organization"]["id"] == o]
        s = Counter(a["taishi"]["alert"]["severity"] for a in mine)
        org_rows.append(
            [
                _e(o),
                len(mine),
                s["critical"],
                s["high"],
                s["medium"] + s["low"],
                _e(", ".join(sorted({a["threat"]["technique"]["id"][0] for a in mine}))),
            ]
        )
    org_rows.sort(key=lambda r: (-int(r[2]), -int(r[3]), -int(r[1])))

    inc_rows = []
    for a in sorted(alerts, key=lambda a: (-a["event"]["risk_score"], a["@timestamp"]))[:200]:
        label = a["taishi"]["alert"]["severity"]
        badge = f'<span class="sev" style="background:{_SEV_COLOR[label]}">{_e(label)}</span>'
        evidence = orjson.dumps(a["taishi"]["evidence"], option=orjson.OPT_INDENT_2).decode()
        inc_rows.append(
            [
                _e(a["event"]["start"][:19].replace("T", " ")),
                badge,
                _e(a["rule"]["name"]),
                _e(a["threat"]["technique"]["id"][0]),
                _e(a["organization"]["id"]),
                _e(a["taishi"]["entity"]["ip"]),
                a["taishi"]["alert"]["count"],
                f"<details><summary>{a['event']['risk_score']:.0f}</summary><pre>{_e(evidence)}</pre></details>",
            ]
        )

    ent_tot: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for d in entities:
        b = d["taishi"]["behaviour"]
        t = ent_tot[(d["organization"]["id"], d["taishi"]["entity"]["ip"])]
        t[0] += b["bytes_out"]
        t[1] += b["bytes_in"]
        t[2] += b["connections_out"] + b["connections_in"]
    ent_rows = [
        [_e(o), _e(ip), f"{v[0]:,}", f"{v[1]:,}", f"{v[2]:,}"]
        for (o, ip), v in sorted(ent_tot.items(), key=lambda kv: -kv[1][0])[:15]
    ]

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header><main>
<div class="cards">{cards_html}</div>
<section><h2>Alerts over time, by ATT&amp;CK technique</h2>{_timeline(alerts)}</section>
<div class="grid">
<section><h2>Techniques</h2>{_table(["technique", "name", "tactic", "incidents", "institutions"], tech_rows, {3, 4})}</section>
<section><h2>Top attacker sources</h2>{_table(["source", "incidents", "institutions", "max risk", "seen at"], src_rows, {1, 2, 3})}</section>
</div>
<section><h2>Institutions</h2>{_table(["institution", "incidents", "critical", "high", "other", "techniques"], org_rows, {1, 2, 3, 4})}</section>
<section><h2>Incidents</h2>{_table(["start (UTC)", "severity", "rule", "technique", "institution", "entity", "count", "risk / evidence"], inc_rows, {6})}</section>
<section><h2>Busiest entities</h2>{_table(["institution", "host", "bytes out", "bytes in", "connections"], ent_rows, {2, 3, 4})}</section>
</main></body></html>
"""
