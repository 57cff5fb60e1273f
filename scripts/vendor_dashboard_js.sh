#!/usr/bin/env bash
# Fetch the dashboard's charting library (uPlot) from npm and copy its minified files and its
# license into the package, so that `theseus dashboard` works offline (no CDN). Run it again only
# to change the version; the copied files are committed.
set -euo pipefail
VERSION=1.6.32
cd "$(dirname "$0")/.."
DEST=theseus/dashboard/static/vendor
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
npm install --prefix "$BUILD" --no-save --no-audit --no-fund "uplot@$VERSION" >/dev/null
SRC="$BUILD/node_modules/uplot"
mkdir -p "$DEST"
cp "$SRC/dist/uPlot.iife.min.js" "$DEST/uPlot.iife.min.js"
cp "$SRC/dist/uPlot.min.css" "$DEST/uPlot.min.css"
cp "$SRC/LICENSE" "$DEST/uPlot.LICENSE"
echo "uPlot $VERSION -> $DEST ($(wc -c <"$DEST/uPlot.iife.min.js") bytes)"
