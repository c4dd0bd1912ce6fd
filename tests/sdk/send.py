#!/usr/bin/env python3
"""Sends traces, metrics and logs to Homeostat with the real OpenTelemetry
Python SDK and its OTLP exporters, and writes a manifest of exactly what was
sent, for `tests/it/sdk.rs` to compare with what Homeostat stored.

    python send.py --protocol grpc|http --endpoint http://127.0.0.1:PORT \
        --service NAME --out manifest.json

What was sent is read back from the SDK itself, not from this script's
intentions: spans and log records from the SDK's in-memory exporters (which
receive the very objects the OTLP exporters receive), metrics from the data
handed to the OTLP metric exporter. Each is then encoded with the SDK's own
OTLP encoder, the one its exporters use, so the manifest holds the wire
values (the encoder decides a few fields itself: span flags, link
trace_state, gauge start times). Values we chose are also checked here
against what the SDK produced, so a surprising SDK fails loudly.

Exits non-zero if any export failed or the SDK logged a warning or error.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
import warnings

# The environment must not change what is sent (OTEL_SERVICE_NAME,
# OTEL_RESOURCE_ATTRIBUTES, temporality preference, limits...).
for _name in list(os.environ):
    if _name.startswith("OTEL_"):
        del os.environ[_name]

from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry._logs import SeverityNumber  # noqa: E402
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.metrics import CallbackOptions, Observation  # noqa: E402
from opentelemetry.proto.common.v1.common_pb2 import AnyValue  # noqa: E402
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus  # noqa: E402
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler  # noqa: E402
from opentelemetry.sdk._logs.export import (  # noqa: E402
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: E402
from opentelemetry.sdk.metrics.view import (  # noqa: E402
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import SpanLimits, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import (  # noqa: E402
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

SCOPE_NAME = "homeostat.sdk-test"
SCOPE_VERSION = "0.9.1"
LOG_SCOPE_NAME = "homeostat.sdk-test.logs"
STDLIB_LOGGER = "homeostat.checkout"

# Explicit bucket boundaries set by a View, and the values recorded.
HISTOGRAM_BOUNDS = [0.0, 10.0, 100.0, 1000.0]
HISTOGRAM_VALUES = [0, 2.5, 10, 50, 2000]  # plus 150 recorded inside a span
HISTOGRAM_IN_SPAN = 150
# Exponential histogram: at most 4 buckets, so the SDK must settle on scale 0
# (buckets (2^(i), 2^(i+1)]) to hold 1..8.
EXPO_VALUES = [0, 1, 2, 3, 4, 8]


class Failures:
    """Everything that went wrong, reported together at the end."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)


FAILURES = Failures()


class SdkLogWatcher(logging.Handler):
    """Fails the run on any warning or error the SDK logs (failed exports,
    dropped data, encoding errors, partial-success replies)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        # The attribute limit this script trips on purpose.
        self.dropped_attribute_warnings = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == "opentelemetry.attributes" and message.startswith("Attributes dict is full"):
            self.dropped_attribute_warnings += 1
            return
        FAILURES.add(f"SDK logged {record.levelname} from {record.name}: {message}")


def watch_exports(exporter, signal: str, record: list):
    """Wraps `exporter.export` to record every call's data and result."""
    original = exporter.export

    def export(data, *args, **kwargs):
        result = original(data, *args, **kwargs)
        record.append((data, result))
        if getattr(result, "name", None) != "SUCCESS":
            FAILURES.add(f"{signal} export returned {result!r}")
        return result

    exporter.export = export
    return exporter


def make_exporters(protocol: str, endpoint: str):
    endpoint = endpoint.rstrip("/")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return (
            OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10),
            OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=10),
            OTLPLogExporter(endpoint=endpoint, insecure=True, timeout=10),
        )
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return (
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=10),
            OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=10),
            OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", timeout=10),
        )
    raise SystemExit(f"unknown protocol {protocol!r}")


# ---------------------------------------------------------------------------
# Manifest encoding: protobuf values → JSON the Rust test can read without
# guessing types.


def any_value(v: AnyValue):
    """A tagged value: {"string"|"int"|"double"|"bool"|"bytes"|"array"|"kvlist": ...}
    or None for an empty AnyValue. kvlists are [key, value] pairs, in order."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return {"string": v.string_value}
    if kind == "int_value":
        return {"int": v.int_value}
    if kind == "double_value":
        return {"double": v.double_value}
    if kind == "bool_value":
        return {"bool": v.bool_value}
    if kind == "bytes_value":
        return {"bytes": base64.b64encode(v.bytes_value).decode()}
    if kind == "array_value":
        return {"array": [any_value(x) for x in v.array_value.values]}
    if kind == "kvlist_value":
        return {"kvlist": [[kv.key, any_value(kv.value)] for kv in v.kvlist_value.values]}
    raise AssertionError(f"unexpected AnyValue {kind}")


def attributes(kvs) -> dict:
    out = {}
    for kv in kvs:
        if kv.key in out:
            FAILURES.add(f"duplicate attribute key {kv.key!r}")
        out[kv.key] = any_value(kv.value)
    return out


def hex_or_none(b: bytes):
    return b.hex() if b else None


def str_or_none(s: str):
    return s if s else None


def enum_name(enum, value: int, prefix: str) -> str:
    name = enum.Name(value)
    assert name.startswith(prefix), name
    return name[len(prefix):]


def scope_of(scope) -> dict:
    return {"scope_name": str_or_none(scope.name), "scope_version": str_or_none(scope.version)}


# ---------------------------------------------------------------------------


def send_traces(tracer_provider, meter_objects, logger, stdlib_logger):
    tracer = tracer_provider.get_tracer(SCOPE_NAME, SCOPE_VERSION)
    histogram = meter_objects["histogram"]

    # A span of another trace, continuing a remote parent that carries a
    # trace state; the CLIENT span below links to it.
    remote_parent = SpanContext(
        trace_id=0x5B8EFFF798038103D269B633813FC60C,
        span_id=0xEEE19B7EC3C1B174,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")]),
    )
    producer = tracer.start_span(
        "publish order.created",
        kind=SpanKind.PRODUCER,
        context=trace.set_span_in_context(NonRecordingSpan(remote_parent)),
        attributes={"messaging.system": "kafka", "messaging.destination.name": "orders"},
    )
    producer.end()

    with tracer.start_as_current_span(
        "GET /checkout",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "http.route": "/checkout",
            "http.response.status_code": 200,
            "http.request.body.size": 90,
            "int.negative.beyond.f64": -9007199254740993,
            "server.load.ratio": 0.25,
            "float.whole": 3.0,
            "float.huge": 1e21,
            "float.tiny": 1.5e-7,
            "cache.hit": True,
            "feature.flags": ["dark-mode", "a,b", 'quote"d', "ünïcødé ✓"],
            "retry.delays.ms": [1, 20, 300],
            "float.list": [0.5, 2.0],
            "bool.list": [True, False],
            "empty.string": "",
        },
    ) as server:
        server.add_event("request.received", {"net.peer.port": 51234, "tls": True})
        other = producer.get_span_context()
        with tracer.start_as_current_span(
            "POST /payments",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "http.response.status_code": 503,
                "http.request.body.size": 1000,
                "server.address": "payments.internal",
            },
            links=[Link(other, {"link.reason": "caused-by", "link.attempt": 2, "link.weight": 0.5})],
        ) as client:
            client.add_event("retry", {"attempt": 1, "delay.ms": 12.5, "reasons": ["timeout", "503"]})
            client.add_event("no.attributes")
            with tracer.start_as_current_span("validate card", kind=SpanKind.INTERNAL) as internal:
                # 18 attributes over a limit of 16: two are dropped.
                for i in range(18):
                    internal.set_attribute(f"extra.{i:02}", i)
                internal.add_event("cache.miss", {"key": "card:4242"})
                try:
                    raise ValueError("card expired")
                except ValueError as e:
                    internal.record_exception(e, {"card.brand": "visa"})
                internal.add_event("fallback", {"provider": "backup"})
                internal.add_event("done")
                internal.add_event("really.done")  # 5 events over a limit of 4
                # A log record inside the span carries its trace and span ids;
                # a histogram measurement gets it as an exemplar.
                logger.emit(
                    timestamp=time.time_ns(),
                    severity_number=SeverityNumber.WARN,
                    severity_text="WARN",
                    body="card validation slow",
                    attributes={
                        "card.brand": "visa",
                        "latency.ms": 812,
                        "ratio": 0.75,
                        "retried": True,
                        "attempts": [1, 2],
                        "payload": b"\x00\xff",
                        "user": {"id": 7, "roles": ["admin", "dev"]},
                    },
                    event_name="card.validation",
                )
                histogram.record(HISTOGRAM_IN_SPAN, {"http.route": "/checkout"})
            client.set_status(Status(StatusCode.ERROR, "payment gateway returned 503"))
        server.set_status(Status(StatusCode.OK))

    # Outside any span: no trace or span id.
    stdlib_logger.error(
        "payment failed for order %s", "A-17", extra={"order.id": "A-17", "amount": 12.5}
    )
    # No timestamp: Homeostat's `time` falls back to the observed time.
    logger.emit(
        severity_number=SeverityNumber.INFO,
        severity_text="INFO",
        body={"event": "checkout", "items": [1, 2], "ok": True, "ratio": 0.5, "nested": {"k": "v"}},
        attributes={"structured": True},
    )


def record_metrics(meter_objects):
    m = meter_objects
    m["counter"].add(3, {"http.route": "/checkout", "http.response.status_code": 200})
    m["counter"].add(4, {"http.route": "/checkout", "http.response.status_code": 200})
    m["counter"].add(1, {"http.route": "/cart", "http.response.status_code": 500})
    m["updown"].add(10, {"queue": "jobs"})
    m["updown"].add(-3, {"queue": "jobs"})
    for v in HISTOGRAM_VALUES:
        m["histogram"].record(v, {"http.route": "/checkout"})
    for v in EXPO_VALUES:
        m["expo"].record(v)


def make_meter_objects(meter):
    def temperature(_options: CallbackOptions):
        yield Observation(21.5, {"room": "lab"})

    return {
        "counter": meter.create_counter("sdk_test.requests", unit="{request}", description="Requests served"),
        "updown": meter.create_up_down_counter("sdk_test.queue.depth", unit="{job}", description="Jobs queued"),
        "histogram": meter.create_histogram("sdk_test.latency", unit="ms", description="Request latency"),
        "expo": meter.create_histogram("sdk_test.payload.size", unit="By", description="Payload sizes"),
        "gauge": meter.create_observable_gauge(
            "sdk_test.temperature", callbacks=[temperature], unit="Cel", description="Room temperature"
        ),
    }


# ---------------------------------------------------------------------------
# Manifest building.


def span_manifest(spans) -> list:
    out = []
    request = encode_spans(spans)
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    {
                        "trace_id": hex_or_none(s.trace_id),
                        "span_id": hex_or_none(s.span_id),
                        "parent_span_id": hex_or_none(s.parent_span_id),
                        "trace_state": str_or_none(s.trace_state),
                        "flags": s.flags,
                        "name": s.name,
                        "kind": enum_name(PbSpan.SpanKind, s.kind, "SPAN_KIND_"),
                        "start_time_ns": s.start_time_unix_nano,
                        "end_time_ns": s.end_time_unix_nano,
                        "status_code": enum_name(PbStatus.StatusCode, s.status.code, "STATUS_CODE_"),
                        "status_message": str_or_none(s.status.message),
                        "attributes": attributes(s.attributes),
                        "dropped_attributes_count": s.dropped_attributes_count,
                        "dropped_events_count": s.dropped_events_count,
                        "dropped_links_count": s.dropped_links_count,
                        "events": [
                            {"name": e.name, "time_ns": e.time_unix_nano, "attributes": attributes(e.attributes)}
                            for e in s.events
                        ],
                        "links": [
                            {
                                "trace_id": hex_or_none(link.trace_id),
                                "span_id": hex_or_none(link.span_id),
                                "trace_state": str_or_none(link.trace_state),
                                "flags": link.flags,
                                "attributes": attributes(link.attributes),
                            }
                            for link in s.links
                        ],
                        "resource": resource,
                        **scope_of(ss.scope),
                    }
                )
    return out


def log_manifest(records) -> list:
    out = []
    request = encode_logs(records)
    for rl in request.resource_logs:
        resource = attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                out.append(
                    {
                        "time_ns": r.time_unix_nano or None,
                        "observed_time_ns": r.observed_time_unix_nano or None,
                        "severity_number": r.severity_number,
                        "severity_text": str_or_none(r.severity_text),
                        "body": any_value(r.body) if r.HasField("body") else None,
                        "trace_id": hex_or_none(r.trace_id),
                        "span_id": hex_or_none(r.span_id),
                        "flags": r.flags,
                        "event_name": str_or_none(r.event_name),
                        "attributes": attributes(r.attributes),
                        "dropped_attributes_count": r.dropped_attributes_count,
                        "resource": resource,
                        **scope_of(sl.scope),
                    }
                )
    return out


def exemplars(pb_exemplars) -> list:
    out = []
    for e in pb_exemplars:
        kind = e.WhichOneof("value")
        out.append(
            {
                "time_ns": e.time_unix_nano,
                "value": getattr(e, kind) if kind else None,
                "trace_id": hex_or_none(e.trace_id),
                "span_id": hex_or_none(e.span_id),
                "filtered_attributes": attributes(e.filtered_attributes),
            }
        )
    return out


def metric_manifest(exports) -> list:
    """One entry per data point per export, in export order."""
    out = []
    for index, metrics_data in enumerate(exports):
        request = encode_metrics(metrics_data)
        for rm in request.resource_metrics:
            resource = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    data = getattr(m, kind)
                    common = {
                        "export": index,
                        "name": m.name,
                        "description": str_or_none(m.description),
                        "unit": str_or_none(m.unit),
                        "type": kind,
                        "is_monotonic": data.is_monotonic if kind == "sum" else None,
                        "temporality": (
                            enum_name(AggregationTemporality, data.aggregation_temporality, "AGGREGATION_TEMPORALITY_")
                            if kind != "gauge"
                            else None
                        ),
                        "resource": resource,
                        **scope_of(sm.scope),
                    }
                    for p in data.data_points:
                        point = {
                            **common,
                            "attributes": attributes(p.attributes),
                            "start_time_ns": p.start_time_unix_nano or None,
                            "time_ns": p.time_unix_nano,
                            "flags": p.flags,
                            "exemplars": exemplars(p.exemplars),
                        }
                        if kind in ("sum", "gauge"):
                            which = p.WhichOneof("value")
                            point["value"] = getattr(p, which)
                            point["value_type"] = which
                        if kind in ("histogram", "exponential_histogram"):
                            point["count"] = p.count
                            point["sum"] = p.sum if p.HasField("sum") else None
                            point["min"] = p.min if p.HasField("min") else None
                            point["max"] = p.max if p.HasField("max") else None
                        if kind == "histogram":
                            point["bucket_counts"] = list(p.bucket_counts)
                            point["explicit_bounds"] = list(p.explicit_bounds)
                        if kind == "exponential_histogram":
                            point["scale"] = p.scale
                            point["zero_count"] = p.zero_count
                            point["zero_threshold"] = p.zero_threshold
                            point["positive_offset"] = p.positive.offset
                            point["positive_bucket_counts"] = list(p.positive.bucket_counts)
                            point["negative_offset"] = p.negative.offset
                            point["negative_bucket_counts"] = list(p.negative.bucket_counts)
                        out.append(point)
    return out


def check(condition: bool, message: str) -> None:
    if not condition:
        FAILURES.add(f"unexpected SDK output: {message}")


def check_spans(spans: list, service: str) -> None:
    """The spans the SDK produced are the ones this script meant."""
    by_name = {s["name"]: s for s in spans}
    check(len(spans) == 4 and len(by_name) == 4, f"4 distinct spans, got {[s['name'] for s in spans]}")
    server, client = by_name.get("GET /checkout"), by_name.get("POST /payments")
    internal, producer = by_name.get("validate card"), by_name.get("publish order.created")
    if not (server and client and internal and producer):
        return
    check(server["parent_span_id"] is None, "the SERVER span is a root")
    check(client["parent_span_id"] == server["span_id"], "CLIENT is the SERVER's child")
    check(internal["parent_span_id"] == client["span_id"], "INTERNAL is the CLIENT's child")
    check(len({server["trace_id"], client["trace_id"], internal["trace_id"]}) == 1, "one trace")
    check(producer["trace_id"] != server["trace_id"], "the linked span is in another trace")
    check(
        client["links"] and client["links"][0]["span_id"] == producer["span_id"],
        "the CLIENT span links to the PRODUCER span",
    )
    check(client["status_code"] == "ERROR", "CLIENT status ERROR")
    check(internal["dropped_attributes_count"] == 2, "two attributes dropped")
    check(internal["dropped_events_count"] == 1, "one event dropped")
    check(server["resource"].get("service.name") == {"string": service}, "service.name")


def check_metrics(points: list, exports: int) -> None:
    last = {}
    for p in points:
        key = (p["name"], json.dumps(p["attributes"], sort_keys=True))
        last[key] = p
    names = sorted({p["name"] for p in last.values()})
    check(
        names
        == ["sdk_test.latency", "sdk_test.payload.size", "sdk_test.queue.depth", "sdk_test.requests", "sdk_test.temperature"],
        f"metric names {names}",
    )
    check(len(last) == 6, f"6 series, got {sorted(last)}")
    for p in last.values():
        name = p["name"]
        if name == "sdk_test.requests":
            want = 7 if p["attributes"]["http.route"] == {"string": "/checkout"} else 1
            check(p["value"] == want and p["value_type"] == "as_int", f"counter {p}")
        elif name == "sdk_test.queue.depth":
            check(p["value"] == 7 and p["is_monotonic"] is False, f"updown {p}")
        elif name == "sdk_test.temperature":
            check(p["value"] == 21.5 and p["value_type"] == "as_double", f"gauge {p}")
        elif name == "sdk_test.latency":
            values = HISTOGRAM_VALUES + [HISTOGRAM_IN_SPAN]
            check(p["explicit_bounds"] == HISTOGRAM_BOUNDS, f"bounds {p['explicit_bounds']}")
            check(p["bucket_counts"] == [1, 2, 1, 1, 1], f"bucket counts {p['bucket_counts']}")
            check(p["count"] == len(values) and p["sum"] == sum(values), f"count/sum {p}")
            check(p["min"] == min(values) and p["max"] == max(values), f"min/max {p}")
        elif name == "sdk_test.payload.size":
            check(p["scale"] == 0 and p["zero_count"] == 1, f"scale/zero_count {p}")
            check(p["positive_offset"] == -1, f"positive offset {p['positive_offset']}")
            check(p["positive_bucket_counts"] == [1, 1, 2, 1], f"positive buckets {p['positive_bucket_counts']}")
            check(p["count"] == len(EXPO_VALUES) and p["sum"] == sum(EXPO_VALUES), f"count/sum {p}")
            check(p["min"] == 0 and p["max"] == 8, f"min/max {p}")
        check(p["temporality"] in (None, "CUMULATIVE"), f"temporality {p['temporality']}")
    check(exports >= 1, "at least one metrics export")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    warnings.simplefilter("ignore", DeprecationWarning)
    watcher = SdkLogWatcher()
    logging.getLogger("opentelemetry").addHandler(watcher)

    resource = Resource.create(
        {
            "service.name": args.service,
            "service.version": "1.2.3",
            "deployment.environment": "sdk-test",
            "host.cpu.count": 8,
            "process.load": 0.125,
            "feature.enabled": True,
        }
    )
    span_exporter, metric_exporter, log_exporter = make_exporters(args.protocol, args.endpoint)
    span_exports: list = []
    metric_exports: list = []
    log_exports: list = []
    watch_exports(span_exporter, "traces", span_exports)
    watch_exports(metric_exporter, "metrics", metric_exports)
    watch_exports(log_exporter, "logs", log_exports)

    # Traces: the OTLP exporter behind a batch processor, as in production;
    # the in-memory exporter sees the same finished spans.
    in_memory_spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(
        resource=resource, span_limits=SpanLimits(max_span_attributes=16, max_events=4)
    )
    tracer_provider.add_span_processor(SimpleSpanProcessor(in_memory_spans))
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))

    # Metrics: one periodic reader that never fires by itself; force_flush
    # exports, and shutdown exports once more (cumulative, same values).
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[reader],
        views=[
            View(
                instrument_name="sdk_test.latency",
                aggregation=ExplicitBucketHistogramAggregation(boundaries=HISTOGRAM_BOUNDS),
            ),
            View(
                instrument_name="sdk_test.payload.size",
                aggregation=ExponentialBucketHistogramAggregation(max_size=4),
            ),
        ],
    )
    meter_objects = make_meter_objects(meter_provider.get_meter(SCOPE_NAME, SCOPE_VERSION))

    # Logs: the logs API directly, and Python's logging through LoggingHandler.
    in_memory_logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(in_memory_logs))
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    logger = logger_provider.get_logger(LOG_SCOPE_NAME, SCOPE_VERSION)
    stdlib_logger = logging.getLogger(STDLIB_LOGGER)
    stdlib_logger.propagate = False
    stdlib_logger.setLevel(logging.INFO)
    stdlib_logger.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))

    token = otel_context.attach(otel_context.Context())
    try:
        record_metrics(meter_objects)
        send_traces(tracer_provider, meter_objects, logger, stdlib_logger)
    finally:
        otel_context.detach(token)

    if not tracer_provider.force_flush():
        FAILURES.add("tracer provider force_flush failed")
    if not meter_provider.force_flush():
        FAILURES.add("meter provider force_flush failed")
    if not logger_provider.force_flush():
        FAILURES.add("logger provider force_flush failed")
    tracer_provider.shutdown()
    meter_provider.shutdown()
    logger_provider.shutdown()

    spans = in_memory_spans.get_finished_spans()
    records = in_memory_logs.get_finished_logs()
    exported_spans = [s for batch, _ in span_exports for s in batch]
    exported_logs = [r for batch, _ in log_exports for r in batch]
    check(
        sorted(s.context.span_id for s in exported_spans) == sorted(s.context.span_id for s in spans),
        f"the OTLP exporter got {len(exported_spans)} spans, the in-memory one {len(spans)}",
    )
    check(len(exported_logs) == len(records) == 3, f"log records: OTLP {len(exported_logs)}, in memory {len(records)}")

    manifest = {
        "protocol": args.protocol,
        "service": args.service,
        "exports": {
            "traces": len(span_exports),
            "metrics": len(metric_exports),
            "logs": len(log_exports),
        },
        "spans": span_manifest(spans),
        "metrics": metric_manifest([data for data, _ in metric_exports]),
        "logs": log_manifest(records),
    }
    check_spans(manifest["spans"], args.service)
    check(watcher.dropped_attribute_warnings == 2, f"{watcher.dropped_attribute_warnings} attributes dropped")
    check_metrics(manifest["metrics"], len(metric_exports))

    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")

    if FAILURES.messages:
        for m in FAILURES.messages:
            print(f"send.py: {m}", file=sys.stderr)
        return 1
    print(
        f"send.py: sent {len(spans)} spans, {len(manifest['metrics'])} metric points "
        f"in {len(metric_exports)} exports, {len(records)} log records over {args.protocol}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
