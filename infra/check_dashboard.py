#!/usr/bin/env python3
"""Checks the CloudWatch dashboard in template.yaml: its body is JSON once `${...}` is
substituted, and every metric it reads from the functions' namespace is one the code emits.

Usage: check_dashboard.py [template.yaml]   (run from the repository root; exit 1 on an error)

The functions emit Embedded Metric Format lines (shared/aws/src/metrics.rs) through
`metrics::emit(...)` with `("<Name>", Unit::...)` tuples; a dashboard naming a metric nothing
emits shows an empty graph without any error, so a rename would go unnoticed.
"""

import json
import re
import sys
from pathlib import Path

from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "turbobackend"


def emitted():
    names = set()
    for path in list((ROOT / "functions").glob("*/src/**/*.rs")) + list(
        (ROOT / "shared").glob("*/src/**/*.rs")
    ):
        names |= set(re.findall(r'\(\s*"([A-Za-z]+)",\s*Unit::', path.read_text()))
    return names


def used(body):
    """Metric names the dashboard reads from NAMESPACE (plain rows and SEARCH expressions)."""
    names = set()
    for widget in body["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            if row and row[0] == NAMESPACE:
                names.add(row[1])
            for part in row:
                if isinstance(part, dict) and "expression" in part:
                    names |= set(re.findall(r'MetricName="([A-Za-z]+)"', part["expression"]))
    return names


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "template.yaml"
    template = cfn_yaml.load(str(path))
    errors = []
    dashboards = [
        (name, r) for name, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Dashboard"
    ]
    if not dashboards:
        errors.append("no AWS::CloudWatch::Dashboard in the template")
    code = emitted()
    for name, resource in dashboards:
        body = resource["Properties"]["DashboardBody"]
        text = body["Fn::Sub"] if isinstance(body, dict) else body
        try:
            parsed = json.loads(re.sub(r"\$\{[^}]+\}", "x", text))
        except json.JSONDecodeError as e:
            errors.append(f"{name}: the dashboard body is not JSON: {e}")
            continue
        for metric in sorted(used(parsed) - code):
            errors.append(f"{name}: reads {NAMESPACE}/{metric}, which no code emits")
        print(f"check_dashboard: {name}: {len(parsed['widgets'])} widgets, metrics {sorted(used(parsed))}")
    if errors:
        for e in errors:
            print(f"check_dashboard: {e}", file=sys.stderr)
        sys.exit(1)
    print("check_dashboard: every metric the dashboard reads is emitted")


if __name__ == "__main__":
    main()
