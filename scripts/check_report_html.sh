#!/usr/bin/env bash
# Render a run's report.html in headless Chromium and check the screenshot is a real page (issue 14).
#   1. installs chromium with apt-get when it is missing (needs root; Debian/Ubuntu);
#   2. runs a demo recipe (`recipe run`, default recipes/centerpoint_int8.yaml) into $OUT;
#   3. renders $OUT/report.html to $OUT/report_screenshot.png (--window-size=$WIDTH,$HEIGHT), offline:
#      the page is self-contained, so nothing is fetched;
#   4. checks the PNG decodes at that size and is neither blank nor flat (scripts/check_png.py).
# Usage: scripts/check_report_html.sh [RECIPE]
# Env:   RECIPE_BIN=.venv/bin/recipe, PYTHON=.venv/bin/python, OUT=runs/report-check, WIDTH=1280, HEIGHT=4000,
#        SKIP_RUN=1 to render an existing $OUT/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE_FILE=${1:-recipes/centerpoint_int8.yaml}
RECIPE_BIN=${RECIPE_BIN:-.venv/bin/recipe}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/report-check}
WIDTH=${WIDTH:-1280}
HEIGHT=${HEIGHT:-4000}

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
  echo "chromium not found: installing it with apt-get" >&2
  apt-get update && apt-get install -y chromium
  browser=$(command -v chromium)
fi
"$browser" --version

if [[ "${SKIP_RUN:-0}" != 1 ]]; then
  RECIPE_NO_PROGRESS=1 "$RECIPE_BIN" run "$RECIPE_FILE" --out "$OUT"
fi
page="$(cd "$OUT" && pwd)/report.html"
shot="$(cd "$OUT" && pwd)/report_screenshot.png"
[[ -f "$page" ]] || { echo "no report.html in $OUT" >&2; exit 1; }

# no network needed: --screenshot waits for the page load; a self-contained page has nothing else to load
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
  --screenshot="$shot" --window-size="$WIDTH,$HEIGHT" "file://$page" 2>/dev/null
"$PYTHON" scripts/check_png.py "$shot" "$WIDTH" "$HEIGHT"
echo "screenshot: $shot"
