"""Events per second of the sensors flow against the raw consume rate of the same topic.

Starts the Kafka-protocol mock broker of the integration tests, fills a topic with
``--events`` sensor readings for ``--series`` sensors (lz4-compressed, each key in
partition ``crc32(key) % partitions`` as the generator CLI does), then measures, in
the same run and interleaved so that the machine's load hits both alike:

* ``raw``: one confluent-kafka consumer (the flow source's consumer settings plus
  ``--kafka-config``) reading every partition from the beginning to its end,
  counting messages;
* ``empty``: ``python -m bytewax.run dataflows.sensors`` on an empty topic with the
  same partitions: interpreter, imports, connections and shutdown;
* ``flow``: the same command on the filled topic with everything on (decode,
  normalize, the flow's default detector and alert policy, alerts and dead letters
  to Kafka, Rerun to an ``.rrd`` file). With ``VIGIL_KAFKA_TAIL=false`` it exits at
  the end of the topic.

* ``raw empty``: the raw consumer on the empty topic (connection and first fetch,
  about 0.5 s against the mock broker).

``flow_eps`` is ``events / (median flow - median empty)`` (steady state, start-up
excluded) and ``raw_consume_eps`` likewise ``events / (median raw - median raw
empty)``; the ``*_with_startup`` figures are the medians of ``events / run``.
``ratio`` is ``flow_eps / raw_consume_eps``. Start-up varies by a few tenths of a
second between runs (two processes, more), which at a few hundred thousand events
is a large part of the steady time; so the same runs are also timed from their
first message to their last: ``raw_consume_eps_working`` from the raw consumer's
first non-empty fetch to its last, ``flow_eps_working`` from the first scored
readings reaching the Rerun sink to the last (its closing log line, earliest to
latest over the processes), and ``ratio_working`` is their ratio (medians of the
repeats). The run fails unless the raw consumer
counts every produced message and the flow's Rerun sink logs every reading.
``peak_rss_mib`` is the largest peak resident memory of a flow process (``wait4``
rusage). On a shared machine the wall-clock rates move with the load; the CPU
seconds move less: ``flow_cpu_us`` is the flow processes' CPU (user + system,
``wait4`` rusage) per event, median run minus median empty run, ``raw_cpu_us``
the raw consumer's (this process's CPU over its run, librdkafka's threads
included) likewise, and ``cpu_ratio`` is ``raw_cpu_us / flow_cpu_us``: the share
of one core's raw reading speed the flow would reach if both ran alone.
``flow_cores`` is how many cores the flow's processes kept busy (their CPU seconds
over their wall seconds, median run, start-up included) and ``machine_busy`` the
share of all ``cpus`` of the machine that were busy meanwhile (``/proc/stat``,
every process counted: the broker, this script, anything else running); near 1
the runs were bound by the machine's cores, and more processes cannot be faster.
``--processes P`` starts P Bytewax processes of one worker each on loopback ports.
One JSON object per series count is printed::

    .venv/bin/python benchmarks/throughput.py --events 300000 --series 10 --partitions 4
    .venv/bin/python benchmarks/throughput.py --series 10,10000,100000

With ``--latency --rate R`` the flow runs tailing the topic while readings are
offered at R events/s for ``--duration`` seconds; the latency of an alert is the
alert message's Kafka timestamp (CreateTime, stamped by the flow's producer when it
emits the alert) minus the wall time at which this script handed the triggering
reading to its producer (so the offering producer's ``--linger-ms`` wait counts
in it). Both clocks are this machine's; resolution 1 ms. ``max_ms_by_5s`` tells a
growing backlog from a stall. With ``--linger-ms 1`` the worst latency grew over
the run (to 11 s after 30 s at 20k/s) while it stayed under 50 ms with 20; whether
the mock broker or the flow slows down on a log of many tiny message sets is not
known yet::

    .venv/bin/python benchmarks/throughput.py --latency --rate 50000 --duration 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generators.sensors import SensorSimConfig, iter_messages, iter_readings  # noqa: E402
from generators.source import partition_of  # noqa: E402
from operators.records import alert_series_ms  # noqa: E402
from operators.sources.kafka import DEFAULT_CONSUMER_CONFIG  # noqa: E402
from tests.integration.kafka_broker import MockKafkaBroker  # noqa: E402

#: Extra librdkafka settings of every client: the mock broker holds each fetch up
#: to fetch.wait.max.ms, and a long queue back-off caps draining a backlog.
KAFKA_CONFIG = {"fetch.wait.max.ms": "10", "fetch.queue.backoff.ms": "5"}
_EOF = KafkaError._PARTITION_EOF
#: The Rerun sink's closing log line: every reading that went through the flow.
LOGGED = re.compile(r"logged (\d+) readings")
#: The Rerun sink's closing line on when scored readings reached it (wall clock).
ARRIVED = re.compile(r"scored readings arrived from ([\d.]+) to ([\d.]+)")


def producer(bootstrap: str, linger_ms: int) -> Producer:
    """An lz4 producer: the mock broker keeps only a few MiB per partition."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "lz4",
            "linger.ms": linger_ms,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def fill(bootstrap: str, topic: str, cfg: SensorSimConfig, partitions: int) -> int:
    """Produce the simulated readings; returns how many were delivered."""
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    prod = producer(bootstrap, 50)
    count = 0
    for key, value in iter_messages(cfg):
        while True:
            try:
                prod.produce(
                    topic,
                    value,
                    key,
                    partition=partition_of(key, partitions),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                prod.poll(0.05)
        count += 1
    if prod.flush(120) or failures:
        raise RuntimeError(f"filling {topic!r}: errors {failures[:3]}")
    return count


def raw_consume(bootstrap: str, topic: str, partitions: int) -> tuple[int, float, float]:
    """Messages read from the beginning to the end of every partition, and the seconds taken.

    Returns:
        The messages, the seconds from start to end, and the seconds from the
        first message to the last (connection and metadata left out).

    """
    started = time.perf_counter()
    first = last = 0.0
    consumer = Consumer(
        {
            **DEFAULT_CONSUMER_CONFIG,
            **KAFKA_CONFIG,
            "bootstrap.servers": bootstrap,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, -2) for p in range(partitions)])
    pending = set(range(partitions))
    count = 0
    while pending:
        msgs = consumer.consume(10_000, 0.01)
        if msgs:
            last = time.perf_counter()
            first = first or last
        for m in msgs:
            err = m.error()
            if err is None:
                count += 1
            elif err.code() == _EOF:
                pending.discard(m.partition())
            else:
                raise RuntimeError(f"raw consume of {topic!r}: {err}")
    elapsed = time.perf_counter() - started
    consumer.close()
    return count, elapsed, last - first


def flow_env(bootstrap: str, topic: str, work: Path, *, tail: bool) -> dict[str, str]:
    """Environment of ``python -m bytewax.run dataflows.sensors`` on ``topic``."""
    return {
        **os.environ,
        "VIGIL_KAFKA_BROKERS": bootstrap,
        "VIGIL_KAFKA_TOPIC": topic,
        "VIGIL_KAFKA_ALERTS_TOPIC": f"{topic}-alerts",
        "VIGIL_KAFKA_DLQ_TOPIC": f"{topic}-dlq",
        "VIGIL_KAFKA_TAIL": "true" if tail else "false",
        "VIGIL_KAFKA_CONFIG": json.dumps(KAFKA_CONFIG),
        "VIGIL_RERUN_MODE": "rrd",
        "VIGIL_RERUN_PATH": str(work / f"{topic}.rrd"),
        "VIGIL_OUT_DIR": str(work),
    }


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports free now (for the processes of one Bytewax cluster)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_flow(env: dict[str, str], work: Path, processes: int) -> list[subprocess.Popen[bytes]]:
    """Start the flow: ``processes`` Bytewax processes of one worker each.

    Each process writes its log to ``<topic>.<i>.log`` and its Rerun recording to
    ``<VIGIL_RERUN_PATH>.<i>`` under ``work``.
    """
    command = [sys.executable, "-m", "bytewax.run", "dataflows.sensors"]
    addresses = ";".join(f"127.0.0.1:{port}" for port in free_ports(processes))
    procs = []
    for i in range(processes):
        cluster = ["-i", str(i), "-a", addresses] if processes > 1 else []
        own = {**env, "VIGIL_RERUN_PATH": f"{env['VIGIL_RERUN_PATH']}.{i}"}
        with (work / f"{env['VIGIL_KAFKA_TOPIC']}.{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(command + cluster, cwd=work, env=own, stdout=log, stderr=log)
            )
    return procs


def interrupt(procs: list[subprocess.Popen[bytes]], grace_s: float = 60.0) -> str:
    """Stop a tailing flow with SIGINT (it closes its sinks); how it stopped.

    Returns ``"interrupted"``, or ``"killed"`` when a process was still running
    ``grace_s`` after the signal (sent twice): once in a long run here a
    Bytewax worker stayed parked and never acted on the signal. The processes
    are left for :func:`wait_flow` to reap (it reads their resource usage).
    """
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    again = time.monotonic() + grace_s / 2
    while time.monotonic() < deadline:
        running = [p for p in procs if _running(p.pid)]
        if not running:
            return "interrupted"
        if again and time.monotonic() > again:
            for proc in running:
                proc.send_signal(signal.SIGINT)
            again = 0.0
        time.sleep(0.1)
    for proc in procs:
        if _running(proc.pid):
            proc.kill()
    return "killed"


def _running(pid: int) -> bool:
    """Whether a child process has not exited yet (an exited one stays a zombie until reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def flow_log(work: Path, topic: str) -> str:
    """The logs of every process of the last run on ``topic``."""
    return "".join(p.read_text(errors="replace") for p in sorted(work.glob(f"{topic}.*.log")))


def wait_flow(
    procs: list[subprocess.Popen[bytes]], work: Path, topic: str, *, check: bool = True
) -> tuple[float, float]:
    """Wait for every process of the flow to exit.

    Returns:
        The largest peak RSS in MiB, and the CPU seconds (user + system) of all.

    Raises:
        RuntimeError: with ``check``, when a process exited non-zero.

    """
    peak = 0.0
    cpu = 0.0
    for proc in procs:
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = max(peak, usage.ru_maxrss / 1024)  # KiB on Linux
        cpu += usage.ru_utime + usage.ru_stime
    codes = [proc.returncode for proc in procs]
    if check and any(codes):
        log = flow_log(work, topic)
        raise RuntimeError(f"flow on {topic!r} exited with {codes}:\n{log[-3000:]}")
    return peak, cpu


def throughput(
    broker: MockKafkaBroker, work: Path, args: argparse.Namespace, series: int
) -> dict[str, Any]:
    """Fill a topic for ``series`` sensors and measure raw and flow rates, interleaved."""
    topic = f"bench-{series}"
    broker.create_topic(topic, args.partitions)
    empty = f"empty-{series}"
    broker.create_topic(empty, args.partitions)
    cfg = SensorSimConfig(count=args.events, sensors=series, seed=args.seed)
    produced = fill(broker.bootstrap, topic, cfg, args.partitions)
    raw_empty_s: list[float] = []
    raw_s: list[float] = []
    empty_s: list[float] = []
    flow_s: list[float] = []
    raw_working_s: list[float] = []
    flow_working_s: list[float] = []
    rss: list[float] = []
    cores: list[float] = []
    busy: list[float] = []
    cpu: dict[str, list[float]] = {"raw": [], "raw_empty": [], "flow": [], "empty": []}
    for i in range(args.repeats):
        before = time.process_time()
        _, seconds, _ = raw_consume(broker.bootstrap, empty, args.partitions)
        cpu["raw_empty"].append(time.process_time() - before)
        raw_empty_s.append(seconds)
        before = time.process_time()
        count, seconds, working = raw_consume(broker.bootstrap, topic, args.partitions)
        cpu["raw"].append(time.process_time() - before)
        if count != produced:
            msg = f"{topic!r} holds {count} of {produced} messages: lower --events"
            raise RuntimeError(msg)
        raw_s.append(seconds)
        raw_working_s.append(working)
        idle = run_flow_on(broker, empty, f"r{i}", args, work)
        empty_s.append(idle.seconds)
        cpu["empty"].append(idle.cpu_s)
        run = run_flow_on(broker, topic, f"r{i}", args, work)
        if run.logged != produced or run.working_s is None:
            raise RuntimeError(f"the flow's Rerun sink logged {run.logged} of {produced} readings")
        flow_s.append(run.seconds)
        flow_working_s.append(run.working_s)
        cpu["flow"].append(run.cpu_s)
        rss.append(run.peak_mib)
        cores.append(run.cpu_s / run.seconds)
        if run.busy is not None:
            busy.append(run.busy)
    alerts = read_values(broker.bootstrap, f"{topic}-r0-alerts")
    dead = read_values(broker.bootstrap, f"{topic}-r0-dlq")
    raw_eps = steady_rate(produced, raw_s, raw_empty_s)
    flow_eps = steady_rate(produced, flow_s, empty_s)
    raw_cpu = per_event_us(produced, cpu["raw"], cpu["raw_empty"])
    flow_cpu = per_event_us(produced, cpu["flow"], cpu["empty"])
    raw_working = round(produced / statistics.median(raw_working_s))
    flow_working = round(produced / statistics.median(flow_working_s))
    return {
        "raw_consume_eps": raw_eps,
        "flow_eps": flow_eps,
        "ratio": round(flow_eps / raw_eps, 4) if flow_eps and raw_eps else None,
        "raw_consume_eps_working": raw_working,
        "flow_eps_working": flow_working,
        "ratio_working": round(flow_working / raw_working, 4),
        "events": produced,
        "series": series,
        "partitions": args.partitions,
        "processes": args.processes,
        "repeats": args.repeats,
        "flow_eps_with_startup": round(statistics.median(produced / s for s in flow_s)),
        "raw_consume_eps_with_startup": round(statistics.median(produced / s for s in raw_s)),
        "startup_s": round(statistics.median(empty_s), 3),
        "raw_startup_s": round(statistics.median(raw_empty_s), 3),
        "raw_s": [round(s, 3) for s in raw_s],
        "raw_empty_s": [round(s, 3) for s in raw_empty_s],
        "empty_s": [round(s, 3) for s in empty_s],
        "flow_s": [round(s, 3) for s in flow_s],
        "raw_working_s": [round(s, 3) for s in raw_working_s],
        "flow_working_s": [round(s, 3) for s in flow_working_s],
        "peak_rss_mib": round(max(rss), 1),
        "raw_cpu_us": raw_cpu,
        "flow_cpu_us": flow_cpu,
        "cpu_ratio": round(raw_cpu / flow_cpu, 4) if raw_cpu and flow_cpu else None,
        "flow_cores": round(statistics.median(cores), 2),
        "machine_busy": statistics.median(busy) if busy else None,
        "cpus": os.cpu_count(),
        "alerts": len(alerts),
        "dead_letters": len(dead),
    }


def per_event_us(events: int, runs: list[float], startups: list[float]) -> float | None:
    """CPU microseconds an event: ``(median run - median start-up) / events``."""
    steady = statistics.median(runs) - statistics.median(startups)
    return round(steady / events * 1e6, 3) if steady > 0 else None


def steady_rate(events: int, runs: list[float], startups: list[float]) -> int | None:
    """``events / (median run - median start-up)``; ``None`` when start-up is not exceeded."""
    steady = statistics.median(runs) - statistics.median(startups)
    return round(events / steady) if steady > 0 else None


@dataclass(frozen=True)
class FlowRun:
    """One run of the flow to the end of a topic.

    Attributes:
        seconds: From start to exit.
        peak_mib: Largest peak resident MiB of its processes.
        logged: Readings the Rerun sink logged.
        cpu_s: CPU seconds of all its processes.
        working_s: From the first scored reading to the last, over all
            processes (start-up and shut-down left out); ``None`` with no reading.
        busy: Share of the machine's CPU time that was busy meanwhile
            (:func:`machine_busy`).

    """

    seconds: float
    peak_mib: float
    logged: int
    cpu_s: float
    working_s: float | None
    busy: float | None


def run_flow_on(
    broker: MockKafkaBroker, topic: str, run: str, args: argparse.Namespace, work: Path
) -> FlowRun:
    """Run the flow to the end of ``topic``, writing to ``<topic>-<run>-alerts`` and ``-dlq``."""
    alerts, dlq = f"{topic}-{run}-alerts", f"{topic}-{run}-dlq"
    broker.create_topic(alerts, 1)
    broker.create_topic(dlq, 1)
    env = flow_env(broker.bootstrap, topic, work, tail=False)
    env["VIGIL_KAFKA_ALERTS_TOPIC"] = alerts
    env["VIGIL_KAFKA_DLQ_TOPIC"] = dlq
    env["VIGIL_RERUN_PATH"] = str(work / f"{topic}-{run}.rrd")
    started, ticks = time.perf_counter(), cpu_ticks()
    peak, cpu = wait_flow(start_flow(env, work, args.processes), work, topic)
    elapsed = time.perf_counter() - started
    busy = machine_busy(ticks, cpu_ticks())
    log = flow_log(work, topic)
    spans = [(float(a), float(b)) for a, b in ARRIVED.findall(log)]
    working = max(b for _, b in spans) - min(a for a, _ in spans) if spans else None
    logged = sum(int(n) for n in LOGGED.findall(log))
    return FlowRun(elapsed, peak, logged, cpu, working, busy)


def cpu_ticks() -> tuple[int, int] | None:
    """``(busy, total)`` CPU ticks of the whole machine so far, or ``None`` without /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal [guest guest_nice]: guest
    # time is already counted in user, so only the first eight add up.
    ticks = [int(x) for x in fields[1:9]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def machine_busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the machine's CPU time that was busy between two :func:`cpu_ticks`."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def read_messages(bootstrap: str, topic: str) -> Iterator[tuple[bytes, int]]:
    """``(value, timestamp ms)`` of every message of a topic, to its current end."""
    consumer = Consumer(
        {
            **KAFKA_CONFIG,
            "bootstrap.servers": bootstrap,
            "group.id": "bench",
            "enable.partition.eof": True,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, -2) for p in partitions])
    pending = set(partitions)
    try:
        while pending:
            for m in consumer.consume(10_000, 0.01):
                err = m.error()
                if err is None:
                    yield m.value() or b"", m.timestamp()[1]
                elif err.code() == _EOF:
                    pending.discard(m.partition())
                else:
                    raise RuntimeError(f"reading {topic!r}: {err}")
    finally:
        consumer.close()


def read_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every message value of a topic."""
    return [value for value, _ts in read_messages(bootstrap, topic)]


def latency(broker: MockKafkaBroker, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Offer ``--rate`` events/s to the tailing flow; alert latencies in ms."""
    topic = "latency"
    broker.create_topic(topic, args.partitions)
    broker.create_topic(f"{topic}-alerts", 1)
    broker.create_topic(f"{topic}-dlq", 1)
    series = args.series[0]
    total = int(args.rate * args.duration)
    cfg = SensorSimConfig(count=total, sensors=series, seed=args.seed)
    messages = [(k, v, partition_of(k, args.partitions)) for k, v in iter_messages(cfg)]
    index = {(r.series, r.ts_ms): i for i, r in enumerate(iter_readings(cfg))}
    sent_at = [0.0] * total

    procs = start_flow(flow_env(broker.bootstrap, topic, work, tail=True), work, args.processes)
    time.sleep(args.warmup)  # interpreter, imports, first fetch
    if any(proc.poll() is not None for proc in procs):
        raise RuntimeError(f"flow exited before any reading was offered:\n{flow_log(work, topic)}")
    prod = producer(broker.bootstrap, args.linger_ms)
    started = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * args.rate) + 1)
        now_ms = time.time() * 1000
        for i in range(sent, due):
            key, value, partition = messages[i]
            prod.produce(topic, value, key, partition=partition)
            sent_at[i] = now_ms
        sent = due
        prod.poll(0)
        time.sleep(0.0005)
    offered_s = time.perf_counter() - started
    prod.flush(60)
    time.sleep(args.drain)
    stopped = interrupt(procs)
    # An interrupted Bytewax run exits non-zero; what it processed is in its log.
    peak, _cpu = wait_flow(procs, work, topic, check=False)
    processed = sum(int(n) for n in LOGGED.findall(flow_log(work, topic)))

    lat: list[float] = []
    by_window: dict[int, list[float]] = {}
    unmatched = 0
    for value, ts_ms in read_messages(broker.bootstrap, f"{topic}-alerts"):
        reading = index.get(alert_series_ms(orjson.loads(value)))
        if reading is None:
            unmatched += 1
            continue
        offered_ms = sent_at[reading] - sent_at[0]
        by_window.setdefault(int(offered_ms // 5000), []).append(ts_ms - sent_at[reading])
        if offered_ms >= args.skip * 1000:
            lat.append(ts_ms - sent_at[reading])
    lat.sort()

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

    return {
        "rate": args.rate,
        "offered_eps": round(total / offered_s),
        "events": total,
        "series": series,
        "partitions": args.partitions,
        "processes": args.processes,
        "readings_processed": processed,
        "flow_stopped": stopped,
        "alerts_measured": len(lat),
        "alerts_unmatched": unmatched,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1], 1) if lat else None,
        # Worst latency of the alerts of each 5 s of offering (skipped seconds included):
        # tells a growing backlog from a stall.
        "max_ms_by_5s": [round(max(v), 1) for _k, v in sorted(by_window.items())],
        "peak_rss_mib": round(peak, 1),
        "latency": "alert Kafka CreateTime - wall time the reading was handed to the producer",
    }


def series_list(text: str) -> list[int]:
    """``10,10000`` as ``[10, 10000]``."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 10,10000, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--series", type=series_list, default=[10])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before offering")
    parser.add_argument("--skip", type=float, default=2.0, help="seconds of alerts not counted")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds after the last reading")
    # With 1 ms the offered topic grows in tiny message sets and latency grew over
    # the run (see the module docstring); 20 ms kept it flat on this machine.
    parser.add_argument("--linger-ms", type=int, default=20, help="offering producer's linger")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vigil-throughput-") as tmp:
        work = Path(tmp)
        with MockKafkaBroker.start(work / "broker.log") as broker:
            if args.latency:
                print(json.dumps(latency(broker, work, args)), flush=True)
                return
            for series in args.series:
                print(json.dumps(throughput(broker, work, args, series)), flush=True)


if __name__ == "__main__":
    main()
