"""The ``taishi`` command. Subcommands import what they need lazily, so collector hosts without pandas,
scikit-learn or the Elasticsearch client can run the collector commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("taishi")


def _settings(args: argparse.Namespace) -> Any:
    from taishi.pipeline.config import Settings

    return Settings.load(args.config)


def _print_table(rows: list[dict[str, Any]], as_json: bool) -> None:
    import orjson

    if as_json:
        for r in rows:
            sys.stdout.write(orjson.dumps(r).decode() + "\n")
        return
    if not rows:
        print("(no rows)")
        return
    cols = list(rows[0])
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print(
            "  ".join(
                _fmt(r[c]).rjust(w) if isinstance(r[c], int) else _fmt(r[c]).ljust(w)
                for c, w in zip(cols, widths, strict=True)
            )
        )


def _fmt(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def _summaries(store: Any, org: str | None, ip: str | None, limit: int) -> list[dict[str, Any]]:
    from dataclasses import asdict

    return [asdict(s) for s in store.entity_summaries(org=org, ip=ip, limit=limit)]


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate a sector under attack, run it through the pipeline in-process, store, summarise, report."""
    from collections import Counter

    from taishi.pipeline import wire
    from taishi.pipeline.demo import demo_sector
    from taishi.pipeline.embedded import MemoryBus, run_embedded
    from taishi.pipeline.query import SqliteStore
    from taishi.pipeline.report import render
    from taishi.pipeline.simulator import SectorSpec
    from taishi.pipeline.sinks import SqliteSink

    settings = _settings(args)
    spec = SectorSpec(
        institutions=args.institutions, flows=args.flows, duration_s=args.minutes * 60, seed=args.seed
    )
    cols, labels = demo_sector(spec)
    bus = MemoryBus(settings.kafka.partitions)
    for key, value, hdrs in wire.sensor_batches(cols, settings.kafka.batch_records):
        bus.send(settings.kafka.flows_topic, key, value, hdrs)
    store_path = Path(args.store)
    store_path.unlink(missing_ok=True)
    res = run_embedded(settings, bus, SqliteSink(store_path), progress=_Progress("pipeline", force=True))
    c = res.counters
    n = len(cols["@timestamp"])
    print(
        f"Simulated {spec.institutions} institutions, {n:,} flows over {args.minutes} min (seed {spec.seed}), "
        f"{len(labels)} injected attacks."
    )
    print(
        f"Pipeline: {c.messages:,} messages, {c.records_valid:,} valid records, {c.dead_letters} dead letters, "
        f"{res.late_records} late, {c.docs:,} documents ({c.alerts} alert writes) -> {store_path}\n"
    )
    store = SqliteStore(store_path)
    alerts = store.documents("taishi-alerts-v1")
    entities = store.documents("taishi-entities-v1")
    per = Counter((a["organization"]["id"], a["threat"]["technique"]["id"][0]) for a in alerts)
    print("Incidents per institution and technique:")
    _print_table(
        [{"institution": o, "technique": t, "incidents": k} for (o, t), k in sorted(per.items())], args.json
    )
    print("\nTop incidents:")
    _print_table(_alert_rows(alerts, args.top), args.json)
    found = {(a["rule"]["id"], a["organization"]["id"], a["taishi"]["entity"]["ip"]) for a in alerts}
    missed = [lb for lb in labels if lb.rule and (lb.rule, lb.org, lb.entity) not in found]
    print(
        f"\nInjected attacks detected: {len(labels) - len(missed)}/{len(labels)}"
        + (f"; missed: {[(m.rule, m.org, m.entity) for m in missed]}" if missed else "")
    )
    if args.report:
        Path(args.report).write_text(
            render(
                alerts,
                entities,
                "Taishi sector situation (demo)",
                f"{spec.institutions} institutions, {n:,} flows, seed {spec.seed}",
            )
        )
        print(f"HTML situation report -> {args.report}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay flow log files through the pipeline into the local store."""
    from taishi.pipeline.embedded import MemoryBus, read_flow_file, run_embedded
    from taishi.pipeline.query import SqliteStore
    from taishi.pipeline.sinks import SqliteSink

    settings = _settings(args)
    bus = MemoryBus(1)  # one partition: a file is one ordered stream
    for path in args.files:
        for chunk in read_flow_file(Path(path)):
            bus.send(settings.kafka.flows_topic, None, chunk)
    res = run_embedded(settings, bus, SqliteSink(args.store))
    c = res.counters
    print(
        f"{c.records_in:,} records read, {c.records_valid:,} valid, {c.dead_letters} rejected, "
        f"{res.late_records} late, {c.docs:,} documents -> {args.store}"
    )
    for d in res.dead_letters[:10]:
        print(f"  rejected (record {d.index}): {d.reason}", file=sys.stderr)
    _print_table(_summaries(SqliteStore(args.store), None, None, args.top), args.json)
    return 0 if c.records_valid or not c.records_in else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    """Write simulated sector flows as JSON lines."""
    from taishi.pipeline import wire
    from taishi.pipeline.simulator import SectorSpec, simulate

    cols = simulate(
        SectorSpec(
            institutions=args.institutions, flows=args.flows, duration_s=args.minutes * 60, seed=args.seed
        )
    )
    out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    try:
        for i in range(0, args.flows, 50_000):
            part = {k: v[i : i + 50_000] for k, v in cols.items()}
            out.write(wire.encode_ndjson(wire._records(part, len(part["@timestamp"]))) + b"\n")
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    """Send flows (a file, or simulated) to Kafka in the batched wire format, keyed by institution+sensor."""
    from taishi.pipeline.kafka_io import produce_columns, produce_file
    from taishi.pipeline.simulator import SectorSpec, simulate

    settings = _settings(args)
    if args.simulate:
        cols = simulate(SectorSpec(institutions=args.institutions, flows=args.simulate, seed=args.seed))
        n = produce_columns(settings, cols, encoding=args.encoding)
    else:
        n = sum(produce_file(settings, Path(p)) for p in args.files)
    print(f"produced {n:,} records to {settings.kafka.flows_topic} at {settings.kafka.bootstrap_servers}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the streaming pipeline: Kafka -> validate -> enrich -> windows -> Elasticsearch."""
    import signal

    from taishi.pipeline.retention import start_retention
    from taishi.pipeline.runner import KafkaPipeline, ensure_topics
    from taishi.pipeline.sinks import ElasticsearchSink

    settings = _settings(args)
    ensure_topics(settings)
    sink = ElasticsearchSink(settings.elasticsearch)
    scheduler = None if args.no_retention else start_retention(settings.elasticsearch, sink.client)
    pipe = KafkaPipeline(settings, sink, status_file=Path(args.status_file) if args.status_file else None)
    signal.signal(signal.SIGTERM, lambda *_: pipe.stop())
    signal.signal(signal.SIGINT, lambda *_: pipe.stop())
    try:
        pipe.run(idle_exit_s=args.idle_exit)
    finally:
        if scheduler:
            scheduler.shutdown(wait=False)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the pipeline's status as JSON: consumer-group lag from Kafka, last metrics, stored counts."""
    import orjson

    from taishi.pipeline import contract
    from taishi.pipeline.kafka_io import group_lag

    settings = _settings(args)
    out: dict[str, Any] = {"group": settings.kafka.group_id, "topic": settings.kafka.flows_topic}
    try:
        out["lag"] = group_lag(settings)
    except Exception as exc:
        out["lag_error"] = f"{type(exc).__name__}: {exc}"
    if args.status_file and Path(args.status_file).exists():
        out["pipeline"] = orjson.loads(Path(args.status_file).read_bytes())
    try:
        from taishi.pipeline.query import ElasticsearchStore
        from taishi.pipeline.sinks import es_client

        store = ElasticsearchStore(es_client(settings.elasticsearch))
        out["documents"] = {
            contract.ENTITIES_INDEX: store.count(contract.ENTITIES_INDEX),
            contract.FLOWS_INDEX: store.count(contract.FLOWS_INDEX),
        }
    except Exception as exc:
        out["documents_error"] = f"{type(exc).__name__}: {exc}"
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0 if "lag" in out else 1


def cmd_entities(args: argparse.Namespace) -> int:
    """Entity behaviour summaries from Elasticsearch (--es) or the local store."""
    from taishi.pipeline.query import ElasticsearchStore, SqliteStore

    settings = _settings(args)
    if args.es:
        from taishi.pipeline.sinks import es_client

        store: Any = ElasticsearchStore(es_client(settings.elasticsearch))
    else:
        store = SqliteStore(args.store or settings.store.path)
    _print_table(_summaries(store, args.org, args.ip, args.limit), args.json)
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Delete Taishi indices older than the retention (what the scheduled job does), once."""
    from taishi.pipeline.retention import delete_expired
    from taishi.pipeline.sinks import es_client

    settings = _settings(args)
    deleted = delete_expired(
        es_client(settings.elasticsearch), settings.elasticsearch.retention_days, dry_run=args.dry_run
    )
    print(("would delete: " if args.dry_run else "deleted: ") + (", ".join(deleted) or "nothing"))
    return 0


class _Progress:
    """A one-line progress bar on stderr (only when it is a terminal, or when forced)."""

    def __init__(self, label: str, force: bool = False) -> None:
        self.label = label
        self.on = force or sys.stderr.isatty()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.on or total <= 0:
            return
        pct = int(100 * done / total)
        if pct != self._last:
            self._last = pct
            bar = "#" * (pct // 4) + "." * (25 - pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar}] {pct:3d}% ({done:,}/{total:,} batches)")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _write_alerts(path: str, alerts: list[dict[str, Any]]) -> None:
    import orjson

    with open(path, "wb") as fh:
        for a in alerts:
            fh.write(orjson.dumps(a) + b"\n")


def _alert_rows(alerts: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    rows = []
    for a in sorted(alerts, key=lambda a: (-a["event"]["risk_score"], a["@timestamp"]))[:limit]:
        rows.append(
            {
                "start": a["event"]["start"][:19].replace("T", " "),
                "severity": a["taishi"]["alert"]["severity"],
                "risk": int(a["event"]["risk_score"]),
                "rule": a["rule"]["id"],
                "technique": a["threat"]["technique"]["id"][0],
                "org": a["organization"]["id"],
                "entity": a["taishi"]["entity"]["ip"],
                "count": a["taishi"]["alert"]["count"],
            }
        )
    return rows


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyze captures and logs offline with the pipeline's enrichment and detectors."""
    from taishi.pipeline.analyze import analyze, load
    from taishi.pipeline.report import render

    settings = _settings(args)
    loaded = load([Path(p) for p in args.inputs], args.format, args.org, args.sensor)
    for problem in loaded.problems[:30]:
        print(f"warning: {problem}", file=sys.stderr)
    res = analyze(settings, loaded, progress=_Progress("analyze"))
    c = res.result.counters
    per = ", ".join(f"{Path(k).name}: {v:,}" for k, v in loaded.per_input.items())
    print(
        f"{c.records_valid:,} flow records ({per}); {c.dead_letters} rejected; {len(res.entities):,} entity windows; "
        f"{len(res.alerts)} incidents"
    )
    if args.out:
        _write_alerts(args.out, res.alerts)
        print(f"alerts (ECS JSON lines) -> {args.out}")
    if args.report:
        Path(args.report).write_text(
            render(res.alerts, res.entities, "Taishi situation report", f"{len(args.inputs)} input(s): {per}")
        )
        print(f"report -> {args.report}")
    _print_table(_alert_rows(res.alerts, args.top), args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Per detector precision, recall and alert latency on labelled scenarios."""
    from taishi.pipeline.scenarios import evaluate, summary_rows

    roots = [Path(r) for r in args.scenarios]
    for r in roots:
        if not r.is_dir():
            raise FileNotFoundError(f"scenario folder {r} does not exist")
    rows = evaluate(roots)
    _print_table(summary_rows(rows), args.json)
    if args.dga:
        from taishi.detectors.dga_model import main as dga_model_main

        print("\nDGA scorer, leave-families-out (each family scored by a model trained without it):")
        return dga_model_main(["evaluate", "--data", str(args.dga)])
    return 0


def cmd_dga_score(args: argparse.Namespace) -> int:
    """Score domain names read from stdin, one score (0..1, higher = more DGA-like) per line out."""
    from taishi.detectors.dga import score_lines

    return score_lines(sys.stdin, sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="taishi", description="Sector-wide network-security situational awareness."
    )
    p.add_argument("--config", help="TOML config file (default: $TAISHI_CONFIG); TAISHI_* env overrides it")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    def sector_args(sp: argparse.ArgumentParser, flows: int, minutes: int = 30) -> None:
        sp.add_argument("--institutions", type=int, default=5)
        sp.add_argument("--flows", type=int, default=flows)
        sp.add_argument("--minutes", type=int, default=minutes)
        sp.add_argument("--seed", type=int, default=7)

    sp = sub.add_parser("demo", help=cmd_demo.__doc__)
    sector_args(sp, 300_000, minutes=75)
    sp.add_argument("--store", default="taishi-demo.sqlite")
    sp.add_argument("--report", default="taishi-demo.html", help="HTML report path ('' for none)")
    sp.add_argument("--top", type=int, default=10)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("replay", help=cmd_replay.__doc__)
    sp.add_argument("files", nargs="+")
    sp.add_argument("--store", default="taishi-local.sqlite")
    sp.add_argument("--top", type=int, default=10)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("simulate", help=cmd_simulate.__doc__)
    sector_args(sp, 100_000)
    sp.add_argument("--out", default="-")
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("produce", help=cmd_produce.__doc__)
    sp.add_argument("files", nargs="*")
    sp.add_argument("--simulate", type=int, default=0, metavar="N", help="produce N simulated flows instead")
    sp.add_argument("--institutions", type=int, default=5)
    sp.add_argument("--seed", type=int, default=7)
    sp.add_argument("--encoding", choices=["arrow", "ndjson"], default="arrow")
    sp.set_defaults(func=cmd_produce)

    sp = sub.add_parser("run", help=cmd_run.__doc__)
    sp.add_argument("--idle-exit", type=float, default=None, metavar="S", help="stop after S idle seconds")
    sp.add_argument("--status-file", default=None)
    sp.add_argument("--no-retention", action="store_true", help="do not schedule the retention job")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("status", help=cmd_status.__doc__)
    sp.add_argument("--status-file", default=None)
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("entities", help=cmd_entities.__doc__)
    sp.add_argument("--org")
    sp.add_argument("--ip")
    sp.add_argument("--limit", type=int, default=20)
    sp.add_argument("--es", action="store_true", help="query Elasticsearch instead of the local store")
    sp.add_argument("--store", default=None)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_entities)

    sp = sub.add_parser("analyze", help=cmd_analyze.__doc__)
    sp.add_argument(
        "inputs",
        nargs="+",
        help="pcap/pcapng, Zeek conn.log (TSV/JSON), binetflow, nfdump CSV, "
        "JSON flows, NetFlow payload files",
    )
    sp.add_argument(
        "--format", choices=["pcap", "netflow", "zeek-tsv", "zeek-json", "argus", "nfdump", "json"]
    )
    sp.add_argument("--org", default="local", help="institution id to tag the records with")
    sp.add_argument("--sensor", default="analyze")
    sp.add_argument("--out", help="write alerts as ECS JSON lines")
    sp.add_argument("--report", help="write a self-contained HTML situation report")
    sp.add_argument("--top", type=int, default=20)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_analyze)

    sp = sub.add_parser("eval", help=cmd_eval.__doc__)
    sp.add_argument("--scenarios", nargs="+", default=["tests/scenarios"], help="folders of scenario folders")
    sp.add_argument("--dga", metavar="DATA_DIR", help="also evaluate the DGA scorer leaving families out, on the "
                    "domain lists in DATA_DIR (e.g. shared/data/domains)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("dga", help="DGA scorer")
    dsub = sp.add_subparsers(dest="dga_cmd", required=True)
    dsp = dsub.add_parser("score", help=cmd_dga_score.__doc__)
    dsp.set_defaults(func=cmd_dga_score)

    sp = sub.add_parser("retention", help=cmd_retention.__doc__)
    sp.add_argument("--dry-run", action="store_true")
    sp.set_defaults(func=cmd_retention)

    # Collector subcommands live with the collectors (they import neither pandas nor Elasticsearch).
    try:
        from taishi.collectors.cli import register
    except ImportError:
        pass
    else:
        register(sub)
    from taishi.dashboards.cli import register as register_dashboards

    register_dashboards(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as exc:
        print(f"taishi {args.cmd}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
