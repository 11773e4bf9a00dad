#!/usr/bin/env bash
# Creates the Python venv holding moto (local S3/SQS/DynamoDB), boto3, the SAM translator
# and cfn-lint, pinned in infra/requirements.txt.
#
# Idempotent: a stamp file inside the venv records the hash of requirements.txt, so a run
# with unchanged pins returns at once. TB_VENV (default .venv at the repository root) picks
# the location; CI points it at a directory that survives between runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

venv="${TB_VENV:-.venv}"
requirements="infra/requirements.txt"
stamp="$venv/.turbobackend-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

up_to_date() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c '' 2>/dev/null
}

up_to_date && exit 0

# One installer at a time (two CI runs or a developer and CI sharing the venv).
mkdir -p "$(dirname "$venv")"
venv_abs="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"
exec 9>"${TMPDIR:-/tmp}/turbobackend-venv-$(printf '%s' "$venv_abs" | sha256sum | cut -c1-16).lock"
flock 9
up_to_date && exit 0

if ! "$venv/bin/python" -c '' 2>/dev/null; then
  # Missing, or made by a Python that is gone: start from an empty directory.
  echo "setup-venv: creating $venv" >&2
  python3 -m venv --clear "$venv"
fi

echo "setup-venv: installing $requirements into $venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
printf '%s\n' "$want" >"$stamp"
