#!/usr/bin/env bash
# Validates template.yaml offline, in two stages:
#   1. the SAM translator turns it into plain CloudFormation (catches SAM-level mistakes),
#      then cfn-lint checks that output (the generated functions, roles, event source
#      mappings and routes);
#   2. infra/check_queues.py on that output: the queue rules cfn-lint does not know
#      (visibility timeout >= 6 x function timeout, redrive, DLQ retention);
#   3. cfn-lint on template.yaml itself (parameters, conditions, plain resources).
# cfn-lint alone does not run the translator, so stage 1 is the one that catches most errors.
# Exits non-zero on any error or warning.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

venv="${TB_VENV:-.venv}"
infra/setup-venv.sh
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

template="${1:-template.yaml}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
translated="$work/template.cfn.json"

echo "validate: SAM translator on $template"
"$venv/bin/python" infra/sam_translate.py "$template" "$translated"
echo "validate: cfn-lint on the translated template"
"$venv/bin/cfn-lint" --regions "$AWS_DEFAULT_REGION" -- "$translated"
echo "validate: queue rules on the translated template"
"$venv/bin/python" infra/check_queues.py "$translated"
echo "validate: cfn-lint on $template"
"$venv/bin/cfn-lint" --regions "$AWS_DEFAULT_REGION" -- "$template"
echo "validate: $template is valid"
