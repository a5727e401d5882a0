"""`hiddenstate serve`: the Kafka service - consume readings, score, produce scores, alerts, dead letters.

    hiddenstate serve --bootstrap 127.0.0.1:9092 --input-topic sensor-readings

Settings come from `--config FILE` (`[service]` and `[detector]` tables), then
HIDDENSTATE_* variables, then these flags; see docs/service.md. SIGTERM or
SIGINT finishes the in-flight batch, commits, leaves the group and exits 0.
Metrics, /healthz and /readyz: docs/metrics.md; logs: `--log-format json`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from detector.cli.options import add_detector_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_detector_arguments(parser)
    kafka = parser.add_argument_group("Kafka (override the [service] table and HIDDENSTATE_* variables)")
    kafka.add_argument("--bootstrap", metavar="HOST:PORT[,...]", help="bootstrap servers (default 127.0.0.1:9092)")
    kafka.add_argument("--input-topic", action="append", metavar="TOPIC",
                       help="topic with readings; repeat for several (default sensor-readings)")
    kafka.add_argument("--scores-topic", metavar="TOPIC", help="topic for scores (default sensor-scores)")
    kafka.add_argument("--alerts-topic", metavar="TOPIC", help="topic for alert events (default sensor-alerts)")
    kafka.add_argument("--dead-letter-topic", metavar="TOPIC",
                       help="topic for messages that cannot be scored (default sensor-readings-dlq)")
    kafka.add_argument("--group", metavar="ID", help="consumer group id (default hiddenstate)")
    kafka.add_argument("--client-id", metavar="ID", help="Kafka client id (default hiddenstate)")
    kafka.add_argument("--max-batch", type=int, metavar="N", help="most messages per micro-batch (default 5000)")
    kafka.add_argument("--score-records", choices=["per_reading", "per_message"],
                       help="one score record per reading (default), or per input message and sensor")
    kafka.add_argument("--poll-timeout-ms", type=int, metavar="MS", help="how long one poll waits (default 200)")
    kafka.add_argument("--max-batch-delay-ms", type=int, metavar="MS",
                       help="most time a batch stays open for more messages while the previous one commits "
                            "(default 5)")
    kafka.add_argument("--grace", type=float, metavar="SECONDS",
                       help="time to drain, commit and leave the group on SIGTERM/SIGINT (default 30)")
    kafka.add_argument("--start-timeout", type=float, metavar="SECONDS",
                       help="give up if the broker is unreachable this long at start (default: retry forever)")
    kafka.add_argument("--changelog-topic", metavar="TOPIC",
                       help="compacted topic of sensor state checkpoints (default <group>.changelog)")
    kafka.add_argument("--no-checkpoints", dest="checkpoints_enabled", action="store_const", const=False,
                       default=None, help="neither write nor restore sensor state checkpoints")
    kafka.add_argument("--processing-guarantee", choices=["at_least_once", "exactly_once"],
                       help="at_least_once (default) or exactly_once (Kafka transactions); see docs/state.md")
    kafka.add_argument("--transactional-id", metavar="ID",
                       help="exactly_once: transactional id, stable per instance (default <group>-<client-id>)")
    obs = parser.add_argument_group("metrics, health, logs")
    obs.add_argument("--metrics-address", metavar="ADDR",
                     help="address of /metrics, /healthz, /readyz (default 0.0.0.0)")
    obs.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="port of /metrics, /healthz, /readyz (default 9108; 0 = any free port)")
    obs.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="log level (default INFO); logs go to stderr")
    obs.add_argument("--log-format", choices=["text", "json"],
                     help="text lines, or one JSON object per line (default text)")


def run(args: argparse.Namespace) -> int:
    from consumers.config import load_service_config
    from consumers.logs import configure_logging
    from consumers.process import serve
    config = load_service_config(
        args.config,
        detector=config_from_args(args),
        bootstrap_servers=args.bootstrap,
        input_topics=args.input_topic,
        scores_topic=args.scores_topic,
        alerts_topic=args.alerts_topic,
        dead_letter_topic=args.dead_letter_topic,
        group_id=args.group,
        client_id=args.client_id,
        max_batch=args.max_batch,
        score_records=args.score_records,
        poll_timeout_ms=args.poll_timeout_ms,
        max_batch_delay_ms=args.max_batch_delay_ms,
        grace_seconds=args.grace,
        start_timeout_seconds=args.start_timeout,
        changelog_topic=args.changelog_topic,
        checkpoints_enabled=args.checkpoints_enabled,
        processing_guarantee=args.processing_guarantee,
        transactional_id=args.transactional_id,
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
        log_format=args.log_format,
    )
    configure_logging(config.log_level, config.log_format, secrets=config.secrets())
    return asyncio.run(serve(config))


def main(argv: list[str] | None = None) -> int:
    """`python -m consumers.commands.serve ...`: the same command without the `hiddenstate` wrapper."""
    from detector.errors import HiddenstateError

    parser = argparse.ArgumentParser(prog="hiddenstate serve", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        return run(args)
    except HiddenstateError as exc:
        print(f"hiddenstate serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
