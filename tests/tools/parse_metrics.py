#!/usr/bin/env python3
"""Parses a /metrics body with the Python prometheus_client parsers (not ours):
argv[1] is "text" (the classic 0.0.4 parser) or "openmetrics" (the strict
OpenMetrics 1.0 parser); the body comes on stdin. Prints every family as JSON
(name, type, samples with labels and values) so the Rust test can check the
values; a parse error exits 1 with the parser's message."""
import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families as text_families

parse = {"text": text_families, "openmetrics": om_families}[sys.argv[1]]
body = sys.stdin.read()
try:
    out = [
        {
            "name": f.name,
            "type": f.type,
            "samples": [
                {"name": s.name, "labels": s.labels, "value": None if math.isnan(s.value) else s.value}
                for s in f.samples
            ],
        }
        for f in parse(body)
    ]
except Exception as e:  # the parser's own words are the point
    print(f"{sys.argv[1]} parser refused the body: {e}", file=sys.stderr)
    sys.exit(1)
json.dump(out, sys.stdout)
