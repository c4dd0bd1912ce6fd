"""Parses an exposition with the Prometheus project's own parser and prints
every sample as JSON, so that a test can read values from it.

    python parse_metrics.py < metrics.txt

The text must be OpenMetrics (what Homeostat serves, with `# EOF`); it is
also parsed as the classic Prometheus text format, which scrapers fall back
to. Exits 1 naming the problem if either parser refuses it.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic


def main():
    text = sys.stdin.read()
    samples = []
    try:
        for family in openmetrics(text):
            for s in family.samples:
                samples.append(
                    {"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value}
                )
    except Exception as e:  # the parser's own message names the line
        print(f"not valid OpenMetrics: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        list(classic(text.replace("# EOF\n", "")))
    except Exception as e:
        print(f"not valid Prometheus text format: {e}", file=sys.stderr)
        sys.exit(1)
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
