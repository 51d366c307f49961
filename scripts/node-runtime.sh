#!/usr/bin/env bash
# Prints the bin folder of the Node.js runtime this project runs on, fetching it first if needed.
# The runtime is the registry's node-linux-<arch> package at the exact version pinned in
# package.json's optionalDependencies (the same binary `npm ci` links as node_modules/.bin/node).
# It lives outside node_modules so that `npm ci` itself runs on it: npm checks every package's
# `engines` against the Node that runs npm, and several dependencies need Node >= 22.
set -euo pipefail
cd "$(dirname "$0")/.."
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "node-runtime: no node-linux package for $(uname -m)" >&2; exit 1 ;;
esac
pkg="node-linux-$arch"
version=$(sed -n "s/.*\"$pkg\": *\"\([0-9.]*\)\".*/\1/p" package.json)
[ -n "$version" ] || { echo "node-runtime: package.json pins no $pkg version" >&2; exit 1; }
dir=".work/runtime/node-v$version-$arch"
if [ ! -x "$dir/bin/node" ]; then
  tmp=$(mktemp -d .work/runtime-fetch.XXXXXX 2>/dev/null || { mkdir -p .work && mktemp -d .work/runtime-fetch.XXXXXX; })
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null && tar xzf ./*.tgz)
  mkdir -p .work/runtime
  rm -rf "$dir" && mv "$tmp/package" "$dir"
  "$dir/bin/node" --version >/dev/null
fi
echo "$PWD/$dir/bin"
