"""Sends an error burst with the real OpenTelemetry SDK: `--seconds` of
server spans for `--service`, `--rate` a second, every one failed, each
timestamped as it is sent (so a running Homeostat sees a live burst).

    python burst.py --endpoint http://127.0.0.1:4317 --service checkout --seconds 4
"""

import argparse
import os
import sys
import time

for key in [k for k in os.environ if k.startswith("OTEL_")]:
    del os.environ[key]

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode


class CheckedExporter(OTLPSpanExporter):
    """Fails the script when an export fails, instead of only logging it."""

    failures = 0

    def export(self, spans):
        result = super().export(spans)
        if result is not SpanExportResult.SUCCESS:
            CheckedExporter.failures += 1
        return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rate", type=float, default=20.0)
    args = p.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": args.service}))
    provider.add_span_processor(
        BatchSpanProcessor(CheckedExporter(endpoint=args.endpoint, insecure=True), schedule_delay_millis=100)
    )
    tracer = provider.get_tracer("homeostat.tests.burst")
    end = time.monotonic() + args.seconds
    sent = 0
    while time.monotonic() < end:
        with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER) as span:
            span.set_attribute("http.route", "/checkout")
            span.set_status(Status(StatusCode.ERROR, "payment backend unavailable"))
        sent += 1
        # Pacing the load generator, not waiting for the server.
        time.sleep(1.0 / args.rate)
    provider.force_flush()
    provider.shutdown()
    if CheckedExporter.failures:
        print(f"{CheckedExporter.failures} exports failed", file=sys.stderr)
        sys.exit(1)
    print(sent)


if __name__ == "__main__":
    main()
