#!/usr/bin/env bash
# Creates the Python venv holding moto (local S3/SQS/DynamoDB), boto3, the SAM translator
# and cfn-lint, pinned in infra/requirements.txt.
#
# Idempotent: a stamp file inside the venv records the hash of requirements.txt, so a second
# run with unchanged pins returns in well under a second. TB_VENV (default .venv at the
# repository root) picks the location; CI points it at a directory that survives between runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

venv="${TB_VENV:-.venv}"
requirements="infra/requirements.txt"
stamp="$venv/.turbobackend-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup-venv: creating $venv" >&2
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
fi

echo "setup-venv: installing $requirements into $venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
printf '%s\n' "$want" >"$stamp"
