#!/usr/bin/env bash
# Installs what tests/viewer (OHIF over Orthanc in headless Chromium) needs, idempotently:
#   Debian packages chromium, orthanc, orthanc-dicomweb (apt-get update first, only when one is missing),
#   and the npm packages pinned in tests/viewer/package.json + package-lock.json (the prebuilt OHIF
#   viewer @ohif/app and playwright-core) into tests/viewer/node_modules.
# Safe to run again: each step is skipped when what it makes is already there and current.
# No browser is downloaded: playwright-core drives Debian's /usr/bin/chromium, and install scripts
# are not run (--ignore-scripts), so nothing fetches from outside the package registries.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
self="$here/$(basename "${BASH_SOURCE[0]}")"
cd "$here"

apt_packages=(chromium orthanc orthanc-dicomweb)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup_viewer: installing Debian packages: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v npm >/dev/null || { echo "setup_viewer: npm is missing (Debian package npm, or Node.js >= 18)" >&2; exit 1; }

# npm ci installs exactly the lock file; a stamp of package.json + lock + this script skips it when current.
stamp="node_modules/.radnode-viewer-installed"
if [ ! -f package-lock.json ]; then
    echo "setup_viewer: package-lock.json missing; resolving it from package.json (commit it)"
    npm install --package-lock-only --ignore-scripts --no-audit --no-fund --loglevel=error
fi
want="$(cat package.json package-lock.json "$self" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
    || [ ! -f node_modules/@ohif/app/dist/index.html ] \
    || [ ! -f node_modules/playwright-core/package.json ]; then
    echo "setup_viewer: npm ci (@ohif/app, playwright-core) into tests/viewer/node_modules"
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
    test -f node_modules/@ohif/app/dist/index.html
    echo "$want" > "$stamp"
fi
test -x /usr/bin/chromium
ohif_version="$(node -p "require('./node_modules/@ohif/app/package.json').version")"
echo "setup_viewer: ready ($(/usr/bin/chromium --version 2>/dev/null | head -1), OHIF $ohif_version)"
