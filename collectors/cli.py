"""``taishi collect ...``: the collector commands of a collector host.

``register(sub)`` adds them to the main parser (``pipeline/cli.py``). Nothing here, nor in what the commands
import, needs pandas, scikit-learn or the Elasticsearch client: ``pip install .[collector]`` is enough.
Kafka connection, TLS and SASL settings come from the one config (``--config`` / ``TAISHI_KAFKA__*``);
``--bootstrap`` and ``--topic`` override it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"1073741824"``, ``"512M"``, ``"2G"`` or ``"64KiB"`` -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS and not t[-1:].isdigit() else ""
    number = t[: len(t) - len(unit)]
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1073741824, 512M, 2G)") from None
    return int(value)


def cmd_netflow(args: argparse.Namespace) -> int:
    """Receive NetFlow v5/v9/IPFIX over UDP and ship the flows to Kafka through a disk spool."""
    from taishi.collectors.netflow_listener import NetflowListener
    from taishi.collectors.shipper import CollectorSettings, Shipper
    from taishi.collectors.spool import SpoolLocked
    from taishi.pipeline.config import Settings

    base = Settings.load(args.config)
    kafka = base.kafka.model_copy(
        update={
            k: v
            for k, v in (("bootstrap_servers", args.bootstrap), ("flows_topic", args.topic))
            if v is not None
        }
    )
    extra: dict[str, Any] = {"hostname": args.hostname} if args.hostname else {}
    settings = CollectorSettings(
        organization_id=args.org,
        sensor_id=args.sensor or base.sensor_id,
        dataset=args.dataset,
        spool_dir=args.spool,
        spool_max_bytes=args.spool_max_bytes,
        full_policy=args.full_policy,
        block_timeout_s=args.block_timeout,
        fsync=args.fsync,
        batch_records=kafka.batch_records,
        kafka=kafka,
        **extra,
    )
    try:
        shipper = Shipper(settings)
    except SpoolLocked as exc:
        print(f"taishi collect netflow: {exc}", file=sys.stderr)
        return 2
    try:
        listener = NetflowListener(
            shipper,
            args.listen,
            batch_datagrams=args.batch_datagrams,
            batch_interval_s=args.batch_interval,
            status_interval_s=args.status_interval,
        )
    except OSError as exc:
        shipper.close(drain_timeout_s=0)
        print(f"taishi collect netflow: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        listener.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        listener.run()
    finally:
        listener.close()
        shipper.close(drain_timeout_s=args.drain_timeout)
        log.info("final status %s", json.dumps(listener.status()))
    return 0


def cmd_spool_status(args: argparse.Namespace) -> int:
    """Print a spool's gauges and lifetime counters as JSON (safe while a collector writes it)."""
    from taishi.collectors.spool import Spool

    spool = Spool(args.spool, readonly=True)
    try:
        sys.stdout.write(json.dumps(spool.status(), indent=2) + "\n")
    finally:
        spool.close()
    return 0


def register(sub: Any) -> None:
    """Add ``collect netflow`` and ``collect spool-status`` to the main parser's subcommands."""
    p = sub.add_parser("collect", help="run a collector on this host, or inspect its spool")
    csub = p.add_subparsers(dest="collector", required=True)

    sp = csub.add_parser("netflow", help=cmd_netflow.__doc__, description=cmd_netflow.__doc__)
    sp.add_argument("--listen", default="0.0.0.0:2055", help="UDP HOST:PORT (default %(default)s)")
    sp.add_argument("--org", required=True, help="institution id written to organization.id")
    sp.add_argument("--sensor", default=None, help="sensor id written to observer.name (default: sensor_id)")
    sp.add_argument("--hostname", default=None, help="observer.hostname (default: this host's name)")
    sp.add_argument("--dataset", default="netflow", help="event.dataset (default %(default)s)")
    sp.add_argument(
        "--spool", required=True, metavar="DIR", help="spool directory (one collector per directory)"
    )
    sp.add_argument(
        "--spool-max-bytes", type=parse_size, default=1 << 30, metavar="N", help="disk the spool may use (1G)"
    )
    sp.add_argument(
        "--full-policy",
        choices=["drop-oldest", "block"],
        default="drop-oldest",
        help="full spool: drop the oldest segment (counted) or make the listener wait (default %(default)s)",
    )
    sp.add_argument(
        "--block-timeout", type=float, default=30.0, metavar="S", help="block policy: give up after S s"
    )
    sp.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    sp.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (overrides the config)")
    sp.add_argument("--topic", default=None, help="flows topic (overrides the config)")
    sp.add_argument(
        "--batch-datagrams", type=int, default=1024, metavar="N", help="datagrams decoded at once"
    )
    sp.add_argument("--batch-interval", type=float, default=1.0, metavar="S", help="ship at least every S s")
    sp.add_argument(
        "--drain-timeout", type=float, default=10.0, metavar="S", help="on stop, send for S s more"
    )
    sp.add_argument("--status-interval", type=float, default=60.0, metavar="S", help="log counters every S s")
    sp.set_defaults(func=cmd_netflow)

    sp = csub.add_parser("spool-status", help=cmd_spool_status.__doc__, description=cmd_spool_status.__doc__)
    sp.add_argument("--spool", required=True, metavar="DIR")
    sp.set_defaults(func=cmd_spool_status)
