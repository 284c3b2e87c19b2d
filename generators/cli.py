"""``vigil-generate``: produce simulated, labelled readings to Kafka or to JSON lines.

Examples::

    vigil-generate sensors --bootstrap localhost:9092 --rate 5000 --count 0
    vigil-generate sensors --preset original --count 1000 --out readings.jsonl
    vigil-generate metrics --bootstrap localhost:9092 --shape trend --series 5
    vigil-generate bears --bootstrap localhost:9092 --bears 8
    vigil-generate flowsites --bootstrap localhost:9092 --sites 8
    python -m generators.cli sensors --count 10          # JSON lines on stdout
    vigil-generate frames --bootstrap localhost:9092 --rate 2
    vigil-generate frames --fields m13 --targets M13 --out frames/   # FITS files, truth.jsonl

Every simulator setting has an option (``--spike-prob``, ``--drift-len 60,300``,
...; see ``vigil-generate sensors --help`` and ``vigil-generate metrics
--help``). Kafka messages are keyed by series id and partitioned with
librdkafka's ``consistent_random`` (CRC32 of the key), the partitioning
:class:`generators.source.SimulatorSource` reproduces. The bytes are those of
:func:`generators.sensors.iter_messages` and
:func:`generators.metrics.iter_messages`.

Progress goes to stderr every ``--progress-interval`` seconds, and a summary at
the end. The exit code is 0 on success, 1 when a message was not delivered (the
reasons are on stderr), 2 for a bad option and 130 when interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from generators import flowsites_cli, frames_cli, metrics, sensors, series_cli, telescope
from generators.metrics import MetricSimConfig
from generators.sensors import SensorSimConfig
from generators.simkit import SimConfigError
from generators.telescope import TelescopeSimConfig
from operators.config import ConfigError, Env

DESCRIPTION = "Produce simulated, labelled readings to Kafka or to JSON lines."
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Producer settings; ``--kafka-config`` overrides any of them.
DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 20,
    "queue.buffering.max.messages": 500_000,
    "acks": "all",
    "enable.idempotence": True,
    # CRC32 of the key, as SimulatorSource partitions (librdkafka's default, made explicit).
    "partitioner": "consistent_random",
}
# Most delivery failures reported one by one; the rest are only counted.
MAX_REPORTED_FAILURES = 10

_HELP = {
    "sensors": "number of sensors, ids 0..N-1",
    "faulty": "comma list of the sensor ids that spike",
    "spike_prob": "spike probability per reading of a faulty sensor",
    "normal_lo": "lowest normal temperature, °C",
    "normal_hi": "highest normal temperature, °C",
    "spike_lo": "lowest spike temperature, °C",
    "spike_hi": "highest spike temperature, °C",
    "baseline_amp": "amplitude of the slow baseline, °C (0: uniform noise only)",
    "baseline_period_s": "period of the slow baseline, seconds",
    "decimals": "decimal places of the temperatures",
    "seed": "random seed (same seed, same bytes)",
    "count": "events in all (0: endless)",
    "start": "event time of the first tick, ISO 8601 (UTC when no offset)",
    "interval_s": "event-time seconds between a sensor's readings",
    "drift_delta": "peak of a drift, °C (random sign)",
    "noise_std": "standard deviation of a noise burst, °C",
    "level_shift_delta": "size of a level shift, °C (random sign)",
}
for _kind in sensors.KINDS:
    _HELP[f"{_kind}_prob"] = f"probability per reading that a {_kind} episode starts"
    _HELP[f"{_kind}_len"] = f"readings a {_kind} episode lasts"

_CHOICES = {"shape": metrics.SHAPES}
_Config = SensorSimConfig | MetricSimConfig | TelescopeSimConfig | series_cli.SeriesConfig


def _pair(kind: type[int] | type[float]) -> Callable[[str], tuple[float, float]]:
    def parse(text: str) -> tuple[float, float]:
        parts = text.split(",")
        if len(parts) != 2:
            msg = f"expected LO,HI, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        try:
            return kind(parts[0]), kind(parts[1])
        except ValueError:
            msg = f"expected LO,HI ({kind.__name__}s), got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None

    return parse


def _time(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        msg = f"expected an ISO 8601 time, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _ids(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _kafka_config(text: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        msg = f"expected a JSON object of librdkafka settings, got {text!r:.60}"
        raise argparse.ArgumentTypeError(msg) from None
    if not isinstance(obj, dict):
        msg = f"expected a JSON object of librdkafka settings, got {type(obj).__name__}"
        raise argparse.ArgumentTypeError(msg)
    return obj


def _add_sim_options(
    parser: argparse.ArgumentParser, defaults: Any, helps: dict[str, str], title: str
) -> None:
    """One option per simulator setting, named after the field."""
    group = parser.add_argument_group(title)
    for f in fields(defaults):
        default = getattr(defaults, f.name)
        parse: Callable[[str], Any]
        metavar = None
        if isinstance(default, datetime):
            parse, shown = _time, default.isoformat()
        elif isinstance(default, tuple) and default and isinstance(default[0], str):
            parse, shown = _ids, ",".join(default)
        elif isinstance(default, tuple):
            parse, shown, metavar = _pair(type(default[0])), f"{default[0]},{default[1]}", "LO,HI"
        else:
            parse, shown = type(default), str(default)
        help_text = helps.get(f.name, f.name.replace("_", " "))
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=parse,
            metavar=metavar,
            choices=_CHOICES.get(f.name),
            help=f"{help_text} (default {shown})",
        )


def _add_output_options(
    parser: argparse.ArgumentParser,
    topic: str,
    out_help: str = "JSON-lines file when no --bootstrap (default stdout)",
) -> None:
    out = parser.add_argument_group("output")
    out.add_argument(
        "--bootstrap", help="Kafka bootstrap HOST:PORT[,HOST:PORT] (default: no Kafka)"
    )
    out.add_argument("--topic", default=topic, help=f"Kafka topic (default {topic})")
    out.add_argument(
        "--kafka-config",
        type=_kafka_config,
        default={},
        metavar="JSON",
        help='extra librdkafka settings, e.g. \'{"security.protocol": "SASL_SSL"}\' '
        "(over those of VIGIL_KAFKA_CONFIG)",
    )
    out.add_argument("--compression", default="lz4", help="Kafka compression (default lz4)")
    out.add_argument(
        "--flush-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for deliveries at the end",
    )
    out.add_argument("--out", type=Path, help=out_help)
    out.add_argument("--rate", type=float, default=0.0, help="events per second (0: unpaced)")
    out.add_argument(
        "--progress-interval",
        type=float,
        default=2.0,
        help="seconds between progress lines on stderr (0: only the summary)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (subcommands ``sensors``, ``metrics`` and ``frames``)."""
    parser = argparse.ArgumentParser(prog="vigil-generate", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    sensor_cmd = sub.add_parser("sensors", help="warehouse temperature sensors")
    _add_output_options(sensor_cmd, "sensors")
    sensor_cmd.add_argument(
        "--preset",
        choices=["default", "original"],
        default="default",
        help="original: uniform 21-28 °C and spikes only, as the original generator",
    )
    title = "simulator settings (defaults of --preset default)"
    _add_sim_options(sensor_cmd, SensorSimConfig(), _HELP, title)
    metric_cmd = sub.add_parser("metrics", help="noisy metric streams, one reading a minute")
    _add_output_options(metric_cmd, "raw-data")
    helps = {**_HELP, **metrics.SETTING_HELP}
    _add_sim_options(metric_cmd, MetricSimConfig(), helps, "simulator settings")
    frame_cmd = sub.add_parser("frames", help="telescope frames: 16-bit images, headers, truth")
    _add_output_options(frame_cmd, "frames", frames_cli.OUT_HELP)
    frames_cli.add_options(frame_cmd)
    helps = {**_HELP, **telescope.SETTING_HELP}
    _add_sim_options(frame_cmd, TelescopeSimConfig(), helps, "simulator settings")
    series_cli.add_bears_parser(sub, _add_output_options, _add_sim_options)
    flowsites_cli.add_flowsites_parser(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> _Config:
    """The simulator settings of the subcommand: defaults (or preset), then every option given.

    Raises:
        SimConfigError: when the settings are invalid.

    """
    base: _Config
    if args.command in series_cli.CONFIGS:
        base = series_cli.CONFIGS[args.command]()
    elif args.command == "metrics":
        base = MetricSimConfig()
    elif args.command == "frames":
        base = TelescopeSimConfig()
    else:
        base = SensorSimConfig.original() if args.preset == "original" else SensorSimConfig()
    given = {f.name: getattr(args, f.name) for f in fields(base)}
    cfg = replace(base, **{k: v for k, v in given.items() if v is not None})
    cfg.validate()
    return cfg


def iter_messages(cfg: _Config) -> Iterator[tuple[bytes, bytes]]:
    """The messages of any simulator (frames as PNG)."""
    if isinstance(cfg, series_cli.SeriesConfig):
        return series_cli.iter_messages(cfg)
    if isinstance(cfg, TelescopeSimConfig):
        return telescope.iter_messages(cfg)
    if isinstance(cfg, MetricSimConfig):
        return metrics.iter_messages(cfg)
    return sensors.iter_messages(cfg)


@dataclass
class _Progress:
    """Counts and the periodic progress line on stderr."""

    interval: float
    stream: IO[str]
    started: float = 0.0
    shown: float = 0.0
    sent: int = 0
    delivered: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.started = self.shown = time.monotonic()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.sent / elapsed if elapsed > 0 else 0.0
        return (
            f"sent {self.sent} delivered {self.delivered} failed {self.failed} "
            f"rate {rate:.0f}/s elapsed {elapsed:.1f}s"
        )

    def count(self) -> None:
        self.sent += 1
        self.delivered = self.sent
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if self.interval > 0 and now - self.shown >= self.interval:
            self.shown = now
            print(self.line(), file=self.stream, flush=True)


def _paced(
    messages: Iterator[tuple[bytes, bytes]], rate: float, wait: Callable[[float], object]
) -> Iterator[tuple[bytes, bytes]]:
    """Yield message ``i`` no earlier than ``i / rate`` seconds after the start."""
    if rate <= 0:
        yield from messages
        return
    start = time.monotonic()
    for i, message in enumerate(messages):
        delay = start + i / rate - time.monotonic()
        while delay > 0.001:
            wait(delay)
            delay = start + i / rate - time.monotonic()
        yield message


def _write_lines(
    messages: Iterator[tuple[bytes, bytes]], out: IO[bytes], rate: float, progress: _Progress
) -> int:
    # Unpaced output is written a chunk at a time; paced output line by line.
    pending: list[bytes] = []
    for _key, value in _paced(messages, rate, time.sleep):
        pending.append(value)
        if rate > 0 or len(pending) >= 10_000:
            out.write(b"\n".join(pending) + b"\n")
            progress.sent += len(pending)
            progress.delivered = progress.sent
            pending.clear()
            if rate > 0:
                out.flush()
            progress.tick()
    if pending:
        out.write(b"\n".join(pending) + b"\n")
        progress.sent += len(pending)
        progress.delivered = progress.sent
    out.flush()
    return EXIT_OK


def producer_config(args: argparse.Namespace, env: Env | None = None) -> dict[str, Any]:
    """The producer's librdkafka settings: defaults, ``VIGIL_KAFKA_CONFIG``, then the options.

    ``VIGIL_KAFKA_CONFIG`` (a JSON object, as the flows read it) carries SASL/TLS
    settings shared with the flows; ``--kafka-config`` overrides any of its keys.

    Raises:
        ConfigError: when ``VIGIL_KAFKA_CONFIG`` is not a JSON object.

    Example:
        >>> args = build_parser().parse_args(
        ...     ["sensors", "--bootstrap", "b:9092", "--kafka-config", '{"linger.ms": 5}']
        ... )
        >>> env = Env({"VIGIL_KAFKA_CONFIG": '{"security.protocol": "SASL_SSL"}'})
        >>> config = producer_config(args, env)
        >>> config["security.protocol"], config["linger.ms"], config["bootstrap.servers"]
        ('SASL_SSL', 5, 'b:9092')

    """
    shared = (env or Env()).json_object("KAFKA_CONFIG")
    return {
        **DEFAULT_PRODUCER_CONFIG,
        "compression.type": args.compression,
        **shared,
        **args.kafka_config,
        "bootstrap.servers": args.bootstrap,
    }


def _produce(
    messages: Iterator[tuple[bytes, bytes]], args: argparse.Namespace, progress: _Progress
) -> int:
    from confluent_kafka import KafkaError, KafkaException, Message, Producer

    errors = sys.stderr

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is None:
            progress.delivered += 1
            return
        progress.failed += 1
        if progress.failed <= MAX_REPORTED_FAILURES:
            print(
                f"delivery failed: topic {msg.topic()} key {msg.key()!r}: {err.str()}", file=errors
            )

    last_text, last_time = "", -math.inf

    def on_error(err: KafkaError) -> None:
        # librdkafka repeats a connection error at every retry: show each one every 10 s.
        nonlocal last_text, last_time
        text, now = err.str(), time.monotonic()
        if text != last_text or now - last_time >= 10.0:
            last_text, last_time = text, now
            print(f"kafka: {text}", file=errors)

    try:
        config = producer_config(args)
    except ConfigError as exc:
        print(f"kafka: {exc}", file=errors)
        return EXIT_USAGE
    try:
        producer = Producer({**config, "error_cb": on_error})
    except KafkaException as exc:  # a bad setting in --kafka-config or --compression
        print(f"kafka: cannot create the producer: {exc}", file=errors)
        return EXIT_USAGE
    topic = args.topic
    paced = args.rate > 0
    interrupted = False
    try:
        for i, (key, value) in enumerate(_paced(messages, args.rate, producer.poll)):
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
            progress.sent += 1
            if paced or i % 1000 == 0:
                producer.poll(0)
                progress.tick()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: flushing what was sent", file=errors)
    left = producer.flush(args.flush_timeout)
    if left:
        print(f"{left} messages not delivered within {args.flush_timeout:g}s", file=errors)
    if progress.failed > MAX_REPORTED_FAILURES:
        print(f"{progress.failed} deliveries failed in all", file=errors)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if left or progress.failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run ``vigil-generate``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except SimConfigError as exc:
        parser.error(f"--{exc.field.replace('_', '-')}: {exc.detail}")
    if args.rate < 0:
        parser.error(f"--rate: expected >= 0 events/s, got {args.rate}")
    progress = _Progress(args.progress_interval, sys.stderr)
    if isinstance(cfg, TelescopeSimConfig):
        if problem := frames_cli.check(args):
            parser.error(problem)
        code = frames_cli.run(cfg, args, lambda m: _produce(m, args, progress), progress.count)
        print(f"done: {progress.line()}", file=sys.stderr)
        return code
    messages = iter_messages(cfg)
    if args.bootstrap:
        code = _produce(messages, args, progress)
    else:
        try:
            if args.out is None:
                code = _write_lines(messages, sys.stdout.buffer, args.rate, progress)
            else:
                with args.out.open("wb") as out:
                    code = _write_lines(messages, out, args.rate, progress)
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader went away (``| head``): not an error
            # Point stdout at /dev/null so that the flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    print(f"done: {progress.line()}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
