#!/usr/bin/env bash
# Builds Jaeger's web UI (jaeger-ui v1.76.0, the release bundled with Jaeger v1.76.0 / v2.13.0 that ./build.sh
# builds) and prints the directory of the built assets on stdout (progress goes to stderr). Point Jaeger at it
# with JAEGER_UI_ASSETS (jaeger.yaml's `ui.assets_path`): Jaeger's Go module embeds only a placeholder page, so a
# `go build` Jaeger serves the query API but no UI without this.
#
#   JAEGER_UI_ASSETS=$(collector-config/jaeger/build-ui.sh) "$(collector-config/jaeger/build.sh)" \
#     --config collector-config/jaeger/jaeger.yaml
#
# Needs git, Node.js >= 20.19 with npm, and the npm registry. Source: a shallow clone of the pinned tag, checked
# against the pinned commit; set JAEGER_UI_GIT to clone from a mirror (a URL or a local clone/bare repository).
# Cached like ./build.sh in $RETRYBUDGET_CACHE (default ~/.cache/retrybudget): only build/ (about 9 MB) is kept,
# the source and its ~650 MB node_modules are deleted after a successful build. Costs about 6 min the first time
# (npm ci ~2 min including the monorepo's `plexus` package, vite build ~3.5 min on 2 cores).
set -euo pipefail
version=v1.76.0
commit=1ceadb6f6fb29774bfaa77a6148499ff7a04902b
repo="${JAEGER_UI_GIT:-https://github.com/jaegertracing/jaeger-ui.git}"
cache="${RETRYBUDGET_CACHE:-$HOME/.cache/retrybudget}"
out="$cache/jaeger-ui-$version-${commit:0:12}"
if [[ ! -f "$out/index.html" ]]; then
  for tool in git node npm; do
    command -v "$tool" >/dev/null || { echo "build-ui.sh: '$tool' not found: install it (Node.js >= 20.19 with npm)" >&2; exit 1; }
  done
  mkdir -p "$cache"
  src="$(mktemp -d "$cache/jaeger-ui-src.XXXXXX")"
  trap 'rm -rf "$src"' EXIT
  echo "build-ui.sh: building jaeger-ui $version into $out (first time: about 6 min)" >&2
  start=$SECONDS
  git -c advice.detachedHead=false clone --quiet --depth 1 --branch "$version" "$repo" "$src/jaeger-ui" >&2
  got="$(git -C "$src/jaeger-ui" rev-parse HEAD)"
  [[ "$got" == "$commit" ]] || { echo "build-ui.sh: $repo tag $version is $got, expected $commit" >&2; exit 1; }
  # The monorepo asks for Node >= 24 (engine-strict in its .npmrc); Node 20.19+ builds it: vite 7's floor.
  # `npm ci` at the root installs both workspaces and its `prepare` script builds packages/plexus, which
  # packages/jaeger-ui imports (building jaeger-ui alone fails on the unbuilt plexus).
  (cd "$src/jaeger-ui" && nice npm ci --engine-strict=false --no-audit --no-fund >&2 &&
    nice npm run build -w packages/jaeger-ui >&2)
  [[ -f "$src/jaeger-ui/packages/jaeger-ui/build/index.html" ]] ||
    { echo "build-ui.sh: the build produced no packages/jaeger-ui/build/index.html" >&2; exit 1; }
  rm -rf "$out.tmp"
  mv "$src/jaeger-ui/packages/jaeger-ui/build" "$out.tmp"
  mv "$out.tmp" "$out"
  echo "build-ui.sh: built in $((SECONDS - start)) s" >&2
fi
echo "$out"
