#!/usr/bin/env bash
# Prepares the real MCP clients the front door's tests drive, and prints where they are.
#
#   tests/clients.sh python        → PYTHON=<venv python with the `mcp` SDK>
#   tests/clients.sh conformance   → NODE=<node >= 22>  CONFORMANCE=<the suite's entry script>
#
# Idempotent and quick once installed (stamp files record the pins).
#  - Python: the venv at ${TB_VENV:-$HOME/.cache/turbobackend/venv}, made by
#    infra/setup-venv.sh from infra/requirements.txt (which pins `mcp`).
#  - Node: ${TB_NPM_DIR:-$HOME/.cache/turbobackend/npm} gets @modelcontextprotocol/conformance
#    (pinned below) and, when the system node is older than 22 (the suite needs 22), Node 22
#    from the npm registry (the `node-linux-<arch>` package).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"

CONFORMANCE_VERSION="0.2.0-alpha.12"
NODE_VERSION="22.23.3"

fail() {
  echo "clients.sh: $*" >&2
  exit 1
}

python_client() {
  command -v python3 >/dev/null ||
    fail "python3 is missing: install Python 3.10+ with venv support (e.g. apt-get install python3 python3-venv)"
  export TB_VENV="${TB_VENV:-$HOME/.cache/turbobackend/venv}"
  "$root/infra/setup-venv.sh" >&2 ||
    fail "infra/setup-venv.sh failed: run 'TB_VENV=$TB_VENV infra/setup-venv.sh' and fix what it reports"
  "$TB_VENV/bin/python" -c 'import mcp.client.streamable_http, httpx2' 2>/dev/null ||
    fail "the venv $TB_VENV lacks the mcp SDK: run 'TB_VENV=$TB_VENV infra/setup-venv.sh'"
  echo "PYTHON=$TB_VENV/bin/python"
}

node_major() {
  "$1" -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0
}

conformance() {
  command -v npm >/dev/null ||
    fail "npm is missing: install Node.js (20 or newer) with npm, e.g. apt-get install nodejs npm"
  local dir="${TB_NPM_DIR:-$HOME/.cache/turbobackend/npm}"
  mkdir -p "$dir"
  local node
  node="$(command -v node || true)"
  local want="conformance@$CONFORMANCE_VERSION"
  local need_node=""
  if [[ -z "$node" || "$(node_major "$node")" -lt 22 ]]; then
    local arch
    case "$(uname -m)" in
      x86_64) arch=x64 ;;
      aarch64 | arm64) arch=arm64 ;;
      *) fail "no Node 22 package for $(uname -m): install Node.js 22 or newer" ;;
    esac
    need_node="node-linux-$arch@$NODE_VERSION"
    want="$want $need_node"
  fi
  local stamp="$dir/.turbobackend-clients"
  exec 9>"$dir/.lock"
  flock 9
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "clients.sh: installing $want into $dir" >&2
    [[ -f "$dir/package.json" ]] || echo '{"private": true}' >"$dir/package.json"
    # shellcheck disable=SC2086
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error \
      "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" $need_node >&2) ||
      fail "npm install failed in $dir: check access to the npm registry, then run: (cd $dir && npm install @modelcontextprotocol/conformance@$CONFORMANCE_VERSION $need_node)"
    echo "$want" >"$stamp"
  fi
  if [[ -n "$need_node" ]]; then
    node="$dir/node_modules/${need_node%@*}/bin/node"
  fi
  [[ -x "$node" && "$(node_major "$node")" -ge 22 ]] || fail "no usable Node 22 at $node"
  local entry="$dir/node_modules/@modelcontextprotocol/conformance/dist/index.js"
  [[ -f "$entry" ]] || fail "the conformance suite is missing at $entry: delete $stamp and re-run"
  echo "NODE=$node"
  echo "CONFORMANCE=$entry"
}

case "${1:-}" in
  python) python_client ;;
  conformance) conformance ;;
  *) fail "usage: $0 python|conformance" ;;
esac
