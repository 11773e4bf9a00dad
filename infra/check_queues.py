"""Checks the queue rules that cfn-lint does not know, on a translated template.

Usage: python infra/check_queues.py TEMPLATE.cfn.json

For every SQS event source mapping:
  - the queue's visibility timeout is at least 6 x the function's timeout (AWS's rule for
    SQS event sources; Lambda rejects a mapping whose function timeout exceeds it);
  - the queue has a redrive policy with maxReceiveCount >= 5;
  - its dead-letter queue keeps messages longer than the queue itself (a DLQ counts
    retention from the message's original enqueue time);
  - the mapping reports partial batch failures.
"""

import json
import sys

DEFAULT_VISIBILITY = 30
DEFAULT_RETENTION = 345600
DEFAULT_FUNCTION_TIMEOUT = 3


def logical_id(value):
    """The logical id behind {"Fn::GetAtt": [id, ...]} or {"Ref": id}, else None."""
    if isinstance(value, dict):
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
        if "Ref" in value:
            return value["Ref"]
    return None


def main(path):
    with open(path, encoding="utf-8") as f:
        resources = json.load(f)["Resources"]
    problems = []
    mappings = 0
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        props = resource["Properties"]
        queue_id = logical_id(props.get("EventSourceArn"))
        queue = resources.get(queue_id, {})
        if queue.get("Type") != "AWS::SQS::Queue":
            continue
        mappings += 1
        function_id = logical_id(props.get("FunctionName"))
        timeout = resources[function_id]["Properties"].get("Timeout", DEFAULT_FUNCTION_TIMEOUT)
        queue_props = queue.get("Properties", {})
        visibility = queue_props.get("VisibilityTimeout", DEFAULT_VISIBILITY)
        if visibility < 6 * timeout:
            problems.append(
                f"{queue_id}: VisibilityTimeout {visibility} < 6 x {function_id} Timeout {timeout}"
            )
        if "ReportBatchItemFailures" not in props.get("FunctionResponseTypes", []):
            problems.append(f"{name}: FunctionResponseTypes lacks ReportBatchItemFailures")
        redrive = queue_props.get("RedrivePolicy")
        if not redrive:
            problems.append(f"{queue_id}: no RedrivePolicy")
            continue
        if int(redrive.get("maxReceiveCount", 0)) < 5:
            problems.append(f"{queue_id}: maxReceiveCount below 5")
        dlq_id = logical_id(redrive.get("deadLetterTargetArn"))
        dlq_props = resources.get(dlq_id, {}).get("Properties", {})
        retention = queue_props.get("MessageRetentionPeriod", DEFAULT_RETENTION)
        dlq_retention = dlq_props.get("MessageRetentionPeriod", DEFAULT_RETENTION)
        if dlq_retention <= retention:
            problems.append(
                f"{dlq_id}: MessageRetentionPeriod {dlq_retention} not above {queue_id}'s {retention}"
            )
    if mappings == 0:
        problems.append("no SQS event source mapping found")
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
