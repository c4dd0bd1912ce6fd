"""Sends server spans with the real OpenTelemetry SDK and its OTLP exporter,
in one export call, and tells whether the receiver accepted them.

    python spans.py --protocol grpc|http --endpoint URL --services a,b \
        [--spans 20] [--errors 5] [--token T] [--ca cert.pem] \
        [--attribute key=value ...]

For each service, `--spans` SERVER spans timestamped now, the first
`--errors` of them failed. `--token` is sent as `authorization: Bearer T`
(what OTEL_EXPORTER_OTLP_HEADERS would set); `--ca` is the certificate to
trust for an https endpoint; each `--attribute` is set on every span (an
incident's user ids and e-mails, for the dataset tests). Prints {"sent": n} and exits 0 when the export
succeeded; exits 2 when the receiver refused it.
"""

import argparse
import json
import os
import sys

for key in [k for k in os.environ if k.startswith("OTEL_")]:
    del os.environ[key]

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode


def exporter(args):
    headers = {"authorization": f"Bearer {args.token}"} if args.token else None
    if args.protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        if args.ca:
            with open(args.ca, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            return OTLPSpanExporter(
                endpoint=args.endpoint, credentials=credentials, headers=headers, timeout=10
            )
        return OTLPSpanExporter(endpoint=args.endpoint, insecure=True, headers=headers, timeout=10)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if args.ca:
        # requests lets these variables override the exporter's own CA file.
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
        os.environ.pop("CURL_CA_BUNDLE", None)
    return OTLPSpanExporter(
        endpoint=args.endpoint.rstrip("/") + "/v1/traces",
        headers=headers,
        certificate_file=args.ca or None,
        timeout=10,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--services", required=True)
    p.add_argument("--spans", type=int, default=20)
    p.add_argument("--errors", type=int, default=0)
    p.add_argument("--token")
    p.add_argument("--ca")
    p.add_argument("--attribute", action="append", default=[])
    args = p.parse_args()
    attributes = dict(a.split("=", 1) for a in args.attribute)

    spans = []
    for service in args.services.split(","):
        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = provider.get_tracer("homeostat.tests.spans")
        for i in range(args.spans):
            with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER) as span:
                span.set_attribute("http.route", "/checkout")
                for key, value in attributes.items():
                    span.set_attribute(key, value)
                if i < args.errors:
                    span.set_status(Status(StatusCode.ERROR, "payment backend unavailable"))
        provider.shutdown()
        spans.extend(memory.get_finished_spans())

    sender = exporter(args)
    result = sender.export(spans)
    sender.shutdown()
    if result is not SpanExportResult.SUCCESS:
        print(f"the receiver refused {len(spans)} spans", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"sent": len(spans)}))


if __name__ == "__main__":
    main()
