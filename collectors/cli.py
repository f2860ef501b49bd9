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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taishi.collectors.pcap_flows import FlowParams
    from taishi.collectors.shipper import Shipper

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


def _shipper(args: argparse.Namespace, producer_factory: Callable[[], Any] | None = None) -> Shipper:
    """The shipper the common options describe (raises ``SpoolLocked`` when another collector has the spool)."""
    from taishi.collectors.shipper import CollectorSettings, Shipper
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
    return Shipper(settings, producer_factory)


def cmd_netflow(args: argparse.Namespace, producer_factory: Callable[[], Any] | None = None) -> int:
    """Receive NetFlow v5/v9/IPFIX over UDP and ship the flows to Kafka through a disk spool."""
    from taishi.collectors.netflow_listener import NetflowListener
    from taishi.collectors.spool import SpoolLocked

    try:
        shipper = _shipper(args, producer_factory)
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


def _flow_params(args: argparse.Namespace) -> FlowParams:
    from taishi.collectors.pcap_flows import FlowParams

    return FlowParams(app_metadata=not args.no_app_metadata)


def cmd_pcap(args: argparse.Namespace, producer_factory: Callable[[], Any] | None = None) -> int:
    """Summarise pcap/pcapng files into flows with DNS/TLS/HTTP metadata and ship them through the spool."""
    from taishi.collectors.capture import ToolMissing, ship_capture_files
    from taishi.collectors.spool import SpoolLocked

    try:
        shipper = _shipper(args, producer_factory)
    except SpoolLocked as exc:
        print(f"taishi collect pcap: {exc}", file=sys.stderr)
        return 2
    try:
        counters = ship_capture_files(args.files, shipper, _flow_params(args), args.wireshark_filter)
    except (ToolMissing, ValueError) as exc:
        print(f"taishi collect pcap: {exc}", file=sys.stderr)
        return 2
    finally:
        shipper.flush(args.drain_timeout)
        shipper.close(drain_timeout_s=0)
    status = {"capture": asdict(counters), **shipper.status()}
    sys.stdout.write(json.dumps(status, indent=2) + "\n")
    pending = status["spool"]["pending_messages"]
    if pending:
        print(
            f"taishi collect pcap: {pending} messages not yet acknowledged by Kafka stay in {args.spool}; "
            "the next collector run on this spool sends them",
            file=sys.stderr,
        )
    return 1 if counters.bad_files or counters.refused_records else 0


def cmd_interface(args: argparse.Namespace, producer_factory: Callable[[], Any] | None = None) -> int:
    """Capture on a network interface with dumpcap (a bounded ring of files) and ship flows with metadata."""
    from taishi.collectors.capture import CaptureError, InterfaceCollector, RingParams, ToolMissing
    from taishi.collectors.spool import SpoolLocked

    try:
        ring = RingParams(
            ring_size_bytes=args.ring_size_mb * 1_000_000,
            ring_files=args.ring_files,
            rotate_s=args.ring_seconds,
            capture_filter=args.capture_filter,
            snaplen=args.snaplen,
        )
        shipper = _shipper(args, producer_factory)
    except (SpoolLocked, ValueError) as exc:
        print(f"taishi collect interface: {exc}", file=sys.stderr)
        return 2
    ring_dir = args.ring_dir or (args.spool / "ring")
    try:
        collector = InterfaceCollector(
            shipper,
            args.interface,
            ring_dir,
            ring,
            _flow_params(args),
            wireshark_filter=args.wireshark_filter,
            status_interval_s=args.status_interval,
        )
    except (CaptureError, OSError) as exc:
        shipper.close(drain_timeout_s=0)
        print(f"taishi collect interface: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        collector.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    rc = 0
    try:
        collector.run()
    except (CaptureError, ToolMissing, ValueError) as exc:
        print(f"taishi collect interface: {exc}", file=sys.stderr)
        rc = 2
    finally:
        collector.close()
        shipper.close(drain_timeout_s=args.drain_timeout)
        log.info("final status %s", json.dumps(collector.status()))
    return rc


def cmd_interfaces(args: argparse.Namespace) -> int:
    """List the interfaces tshark can capture on (needs tshark and capture permission)."""
    from taishi.collectors.capture import CaptureError, ToolMissing, list_interfaces

    try:
        names = list_interfaces()
    except (CaptureError, ToolMissing) as exc:
        print(f"taishi collect interfaces: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{n}\n" for n in names))
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


def _add_shipper_args(sp: argparse.ArgumentParser, dataset: str, drain_help: str) -> None:
    """Identity, spool and Kafka options every shipping collector takes."""
    sp.add_argument("--org", required=True, help="institution id written to organization.id")
    sp.add_argument("--sensor", default=None, help="sensor id written to observer.name (default: sensor_id)")
    sp.add_argument("--hostname", default=None, help="observer.hostname (default: this host's name)")
    sp.add_argument("--dataset", default=dataset, help="event.dataset (default %(default)s)")
    sp.add_argument(
        "--spool",
        required=True,
        type=Path,
        metavar="DIR",
        help="spool directory (one collector per directory)",
    )
    sp.add_argument(
        "--spool-max-bytes", type=parse_size, default=1 << 30, metavar="N", help="disk the spool may use (1G)"
    )
    sp.add_argument(
        "--full-policy",
        choices=["drop-oldest", "block"],
        default="drop-oldest",
        help="full spool: drop the oldest segment (counted) or make the collector wait (default %(default)s)",
    )
    sp.add_argument(
        "--block-timeout", type=float, default=30.0, metavar="S", help="block policy: give up after S s"
    )
    sp.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    sp.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (overrides the config)")
    sp.add_argument("--topic", default=None, help="flows topic (overrides the config)")
    sp.add_argument("--drain-timeout", type=float, default=10.0, metavar="S", help=drain_help)


def _add_packet_args(sp: argparse.ArgumentParser) -> None:
    """Options of the packet collectors (files and interfaces)."""
    sp.add_argument(
        "--no-app-metadata",
        action="store_true",
        help="flows only: skip the DNS question, TLS server name and HTTP request of each flow",
    )
    sp.add_argument(
        "--wireshark-filter",
        default=None,
        metavar="FILTER",
        help="also run Wireshark's dissectors (pyshark) on the packets matching this display filter, to fill "
        "metadata the fast path does not parse, e.g. 'dns and tcp'; slow: tshark reads every packet",
    )


def register(sub: Any) -> None:
    """Add ``collect netflow|pcap|interface|interfaces|spool-status`` to the main parser's subcommands."""
    p = sub.add_parser("collect", help="run a collector on this host, or inspect its spool")
    csub = p.add_subparsers(dest="collector", required=True)

    sp = csub.add_parser("netflow", help=cmd_netflow.__doc__, description=cmd_netflow.__doc__)
    sp.add_argument("--listen", default="0.0.0.0:2055", help="UDP HOST:PORT (default %(default)s)")
    _add_shipper_args(sp, "netflow", "on stop, send for S s more")
    sp.add_argument(
        "--batch-datagrams", type=int, default=1024, metavar="N", help="datagrams decoded at once"
    )
    sp.add_argument("--batch-interval", type=float, default=1.0, metavar="S", help="ship at least every S s")
    sp.add_argument("--status-interval", type=float, default=60.0, metavar="S", help="log counters every S s")
    sp.set_defaults(func=cmd_netflow)

    sp = csub.add_parser("pcap", help=cmd_pcap.__doc__, description=cmd_pcap.__doc__)
    sp.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="pcap or pcapng files; each is summarised on its own",
    )
    _add_shipper_args(
        sp, "packets.flow", "wait up to S s for Kafka to acknowledge, then leave the rest spooled"
    )
    _add_packet_args(sp)
    sp.set_defaults(func=cmd_pcap)

    sp = csub.add_parser("interface", help=cmd_interface.__doc__, description=cmd_interface.__doc__)
    sp.add_argument("interface", metavar="IF", help="interface name as `taishi collect interfaces` lists it")
    _add_shipper_args(sp, "packets.flow", "on stop, send for S s more")
    _add_packet_args(sp)
    sp.add_argument(
        "--ring-size-mb", type=int, default=64, metavar="MB", help="a ring file is complete at this size (64)"
    )
    sp.add_argument(
        "--ring-files",
        type=int,
        default=8,
        metavar="N",
        help="ring files kept: disk <= N x size; the collector may lag N-1 files before dumpcap overwrites (8)",
    )
    sp.add_argument(
        "--ring-seconds", type=int, default=30, metavar="S", help="a ring file is complete after S s (30)"
    )
    sp.add_argument(
        "--ring-dir", type=Path, default=None, metavar="DIR", help="where dumpcap writes (default SPOOL/ring)"
    )
    sp.add_argument(
        "--capture-filter", default=None, metavar="BPF", help="kernel capture filter, e.g. 'ip or ip6'"
    )
    sp.add_argument(
        "--snaplen", type=int, default=None, metavar="N", help="bytes kept per packet (default all)"
    )
    sp.add_argument("--status-interval", type=float, default=60.0, metavar="S", help="log counters every S s")
    sp.set_defaults(func=cmd_interface)

    sp = csub.add_parser("interfaces", help=cmd_interfaces.__doc__, description=cmd_interfaces.__doc__)
    sp.set_defaults(func=cmd_interfaces)

    sp = csub.add_parser("spool-status", help=cmd_spool_status.__doc__, description=cmd_spool_status.__doc__)
    sp.add_argument("--spool", required=True, metavar="DIR")
    sp.set_defaults(func=cmd_spool_status)
