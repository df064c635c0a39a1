"""The ``radnode`` command line: serve, check-config, status, retry, purge, echo, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from node.cli_ml import add_ml_commands
from node.config import Config, ConfigError, load_config


def _default_config_path() -> Path:
    return Path(os.environ.get("RADNODE_CONFIG", "config.toml"))


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"radnode: invalid configuration\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(
        f"{args.config}: OK (AE {config.node.ae_title} on {config.node.host}:{config.node.port}, "
        f"{len(config.peers)} peers, {len(config.destinations)} destinations, {len(config.routes)} routes, "
        f"pipelines: {', '.join(sorted(config.pipelines))})"
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from node.service import serve

    return serve(_load(args.config), args.role, args.config)


def _format_time(value: float | None) -> str:
    return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _cmd_status(args: argparse.Namespace) -> int:
    from storage.database import create_database_engine, migrate
    from storage.status import collect_status

    config = _load(args.config)
    engine = create_database_engine(config.database_url)
    migrate(engine)
    studies = collect_status(engine, limit=args.limit)
    if args.json:
        print(json.dumps({"studies": [study.as_dict() for study in studies]}, indent=2))
        return 0
    if not studies:
        print("no studies received yet")
        return 0
    for study in studies:
        total = sum(s.instance_count for s in study.series)
        print(f"study {study.study_instance_uid}  {study.state}  {len(study.series)} series, {total} instances, "
              f"first received {_format_time(study.first_received_at)}")
        for series in study.series:
            print(f"  series {series.series_instance_uid}  {series.modality or '?':<3} {series.state:<9} "
                  f"{series.instance_count:>5} instances  {series.routing_note or ''}")
            for job in series.jobs:
                error = f"  ({job.last_error})" if job.last_error else ""
                measured = "".join(f", {k} {v:.1f}" for k, v in (job.measurements or {}).items())
                print(f"    job {job.id}: {job.pipeline} via route {job.route}: {job.state}, "
                      f"{job.attempts} attempt(s), {job.results} result object(s){measured}{error}")
                for delivery in job.deliveries:
                    why = f"  ({delivery.last_error})" if delivery.last_error else ""
                    print(f"      delivery {delivery.id} to {delivery.destination}: {delivery.state}, "
                          f"{delivery.attempts} attempt(s){why}")
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    from storage.database import create_database_engine, migrate
    from storage.deliveries import DeliveryQueue, retry_failed_jobs

    config = _load(args.config)
    engine = create_database_engine(config.database_url)
    migrate(engine)
    now = time.time()
    deliveries = DeliveryQueue(engine, config.delivery.give_up_after_s).retry(now, args.delivery or None)
    jobs = retry_failed_jobs(engine, now, args.job or None)
    print(f"re-queued {deliveries} dead deliveries and {jobs} failed jobs")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    from node.retention import run_purge
    from storage.database import create_database_engine, migrate

    config = _load(args.config)
    engine = create_database_engine(config.database_url)
    migrate(engine)
    purged = run_purge(config, engine, older_than_days=args.older_than, watermark_percent=None,
                       dry_run=args.dry_run, via="cli")
    for study in purged:
        print(f"study {study.study_instance_uid}: {study.files} files, {study.bytes / 1e6:.1f} MB"
              f"{' (dry run)' if args.dry_run else ''}")
    print(f"{'would purge' if args.dry_run else 'purged'} {len(purged)} finished studies "
          f"(processed and delivered, last activity over {args.older_than:g} days ago)")
    return 0


def _cmd_reload(args: argparse.Namespace) -> int:
    from node.reload import signal_running_node

    config = _load(args.config)  # an invalid file is refused here, and the running node keeps its own
    try:
        pid = signal_running_node(config.node.data_dir)
    except (ProcessLookupError, PermissionError) as exc:
        print(f"radnode reload: {exc}", file=sys.stderr)
        return 1
    print(f"{args.config}: valid; asked the node (pid {pid}) to reload it")
    return 0


def _cmd_echo(args: argparse.Namespace) -> int:
    from node.delivery import DeliveryError, address_of, echo

    config = _load(args.config)
    destination = next((d for d in config.destinations if d.name == args.name), None)
    if destination is None:
        known = ", ".join(d.name for d in config.destinations) or "none configured"
        print(f"radnode: no destination named {args.name!r} (known: {known})", file=sys.stderr)
        return 2
    address = address_of(destination)
    try:
        echo(address, config.node.ae_title, config.delivery.timeout_s)
    except DeliveryError as exc:
        print(f"{args.name}: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: {destination.ae_title}@{destination.host}:{destination.port} answers C-ECHO")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from node.demo import DemoError, run_demo

    try:
        return run_demo(args.workdir.resolve())
    except DemoError as exc:
        print(f"radnode demo: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radnode", description="DICOM node that runs AI pipelines")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", type=Path, default=_default_config_path(),
                         help="config file (default: $RADNODE_CONFIG or ./config.toml)")
        return sub

    serve = add("serve", "run the node: receivers, workers, completion and delivery")
    serve.add_argument("--role", choices=["all", "receiver", "worker"], default="all")
    serve.set_defaults(func=_cmd_serve)
    add("check-config", "validate the config file and exit").set_defaults(func=_cmd_check_config)
    status = add("status", "show studies, series, jobs")
    status.add_argument("--json", action="store_true")
    status.add_argument("--limit", type=int, default=50)
    status.set_defaults(func=_cmd_status)
    retry = add("retry", "re-queue dead deliveries and failed jobs (all, or the given ids)")
    retry.add_argument("--delivery", type=int, action="append", help="a delivery id (repeatable)")
    retry.add_argument("--job", type=int, action="append", help="a job id (repeatable)")
    retry.set_defaults(func=_cmd_retry)
    purge = add("purge", "delete spool and outbox files of processed and delivered studies")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                       help="last activity (instance, job, delivery) at least this many days ago; 0: all finished")
    purge.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    purge.set_defaults(func=_cmd_purge)
    add("reload", "validate the config, then have the running node apply it (as SIGHUP does)").set_defaults(
        func=_cmd_reload)
    echo = add("echo", "check a destination with C-ECHO")
    echo.add_argument("name", help="a [[destinations]] name")
    echo.set_defaults(func=_cmd_echo)
    demo = commands.add_parser("demo", help="run the node end to end on the real MNI152 sample")
    demo.add_argument("--workdir", type=Path, default=Path("radnode-demo"),
                      help="folder for the demo's node data, PACS and outputs (emptied first)")
    demo.set_defaults(func=_cmd_demo)
    add_ml_commands(commands, add)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
