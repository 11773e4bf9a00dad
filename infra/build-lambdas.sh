#!/usr/bin/env bash
# Builds the three Lambda bootstraps (api, worker, finalizer) with cargo-lambda, for arm64
# (Graviton, as template.yaml declares) unless TB_LAMBDA_ARCH=x86-64.
#
# cargo-lambda comes from PyPI into the venv (${TB_VENV:-.venv}) with its own zig, so no
# system zig or Docker is needed. arm64 also needs Rust's standard library for
# aarch64-unknown-linux-gnu, which `rustup target add` downloads from the Rust
# distribution server once.
#
# Output: <cargo target dir>/lambda/<name>/bootstrap, what `cargo lambda deploy` uploads.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

venv="${TB_VENV:-.venv}"
arch="${TB_LAMBDA_ARCH:-arm64}"
binaries=(api worker finalizer)

case "$arch" in
  arm64) arch_flag=--arm64 rust_target=aarch64-unknown-linux-gnu ;;
  x86-64) arch_flag=--x86-64 rust_target=x86_64-unknown-linux-gnu ;;
  *) echo "build-lambdas: TB_LAMBDA_ARCH must be arm64 or x86-64, not $arch" >&2; exit 2 ;;
esac

want="$(sed -n 's/^cargo-lambda==//p' infra/requirements-build.txt)"
if ! "$venv/bin/cargo-lambda" lambda --version 2>/dev/null | grep -q "cargo-lambda $want "; then
  if ! "$venv/bin/python" -c '' 2>/dev/null; then
    python3 -m venv --clear "$venv"
  fi
  echo "build-lambdas: installing cargo-lambda $want into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r infra/requirements-build.txt
fi
# `cargo lambda` finds cargo-lambda on PATH, and cargo-lambda finds zig through its Python.
PATH="$(cd "$venv/bin" && pwd):$PATH"
export PATH

if ! rustup target list --installed | grep -qx "$rust_target"; then
  echo "build-lambdas: adding the Rust target $rust_target" >&2
  rustup target add "$rust_target" || {
    echo "build-lambdas: could not download the $rust_target standard library;" \
      "install it with 'rustup target add $rust_target' where the Rust distribution server" \
      "is reachable, or build with TB_LAMBDA_ARCH=x86-64 (and set Architectures: [x86_64])" >&2
    exit 1
  }
fi

bin_args=()
for name in "${binaries[@]}"; do bin_args+=(--bin "$name"); done
start=$SECONDS
cargo lambda build --release "$arch_flag" "${bin_args[@]}"
echo "build-lambdas: built in $((SECONDS - start)) s"

target_dir="$(cargo metadata --format-version 1 --no-deps |
  "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
for name in "${binaries[@]}"; do
  bootstrap="$target_dir/lambda/$name/bootstrap"
  size="$(stat -c %s "$bootstrap")"
  kind="$(file -b "$bootstrap" 2>/dev/null | cut -d, -f1-2 || true)"
  awk -v n="$name" -v s="$size" -v p="${bootstrap#"$root"/}" -v k="$kind" \
    'BEGIN { printf "%-10s %6.2f MB  %s  %s\n", n, s / 1e6, p, k }'
done
