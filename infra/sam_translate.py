"""Translate a SAM template into plain CloudFormation, offline.

Usage: python infra/sam_translate.py TEMPLATE OUTPUT

Runs the same translator CloudFormation runs for `Transform: AWS::Serverless-2016-10-31`,
so SAM-level mistakes (an unknown event type, a wrong event property) fail here, and the
output can be linted by cfn-lint, which checks the generated resources in depth.
No AWS account or network is needed: local CodeUri paths are replaced by a placeholder S3
location (what `sam package` would do for real) and managed policy names are not looked up.
"""

import json
import os
import sys

from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class OfflinePolicyLoader:
    """Stands in for the IAM lookup of AWS managed policy names; the template uses none."""

    def load(self):
        return {}


def main(template_path, output_path):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(template_path, encoding="utf-8") as f:
        template = yaml_parse(f.read())

    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource.setdefault("Properties", {})["CodeUri"] = "s3://placeholder-bucket/code.zip"

    try:
        translated = transform(template, {}, OfflinePolicyLoader())
    except InvalidDocumentException as error:
        for cause in error.causes:
            print(f"{template_path}: {cause.message}", file=sys.stderr)
        return 1

    with open(output_path, "w", encoding="utf-8") as f:
        json.dump(translated, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
