#!/usr/bin/env bash
# Validates template.yaml (or the template given) offline, in three stages:
#   1. the SAM translator turns it into plain CloudFormation (catches SAM-level mistakes),
#      then cfn-lint checks that output (the generated functions, roles, event source
#      mappings and routes);
#   2. infra/check_queues.py on that output: the queue rules cfn-lint does not know
#      (visibility timeout >= 6 x function timeout, redrive, DLQ retention);
#   3. cfn-lint on template.yaml itself (parameters, conditions, plain resources);
#   4. infra/check_iam.py: each function is granted exactly the AWS calls its code makes;
#   5. infra/check_dashboard.py: the dashboard's body is JSON and reads only emitted metrics.
# cfn-lint alone does not run the SAM translator, so stage 1 catches most errors.
# Exits non-zero on any error or warning.
set -euo pipefail
template="$(realpath "${1:-$(dirname "$0")/../template.yaml}")"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

venv="${TB_VENV:-.venv}"
infra/setup-venv.sh
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

work="$(mktemp -d)"
# On failure the translated template stays, so the lines cfn-lint points at can be read.
trap 'if (($?)); then echo "validate: translated template kept in $translated" >&2; else rm -rf "$work"; fi' EXIT
translated="$work/template.cfn.json"

echo "validate: SAM translator on ${template#"$root"/}"
"$venv/bin/python" infra/sam_translate.py "$template" "$translated"
echo "validate: cfn-lint on the translated template"
"$venv/bin/cfn-lint" --regions "$AWS_DEFAULT_REGION" -- "$translated"
echo "validate: queue rules on the translated template"
"$venv/bin/python" infra/check_queues.py "$translated"
echo "validate: cfn-lint on ${template#"$root"/}"
"$venv/bin/cfn-lint" --regions "$AWS_DEFAULT_REGION" -- "$template"
echo "validate: IAM grants against the code"
"$venv/bin/python" infra/check_iam.py "$template"
echo "validate: dashboard against the emitted metrics"
"$venv/bin/python" infra/check_dashboard.py "$template"
echo "validate: ${template#"$root"/} is valid"
