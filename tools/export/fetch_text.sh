#!/usr/bin/env bash
# Installs / unpacks the Debian packages whose text the demo world is trained on.
# Run as root on Debian 12 (bookworm). Idempotent.
set -euo pipefail
ROOT="${CROCO_TEXT_ROOT:-/var/tmp/croco-text/root}"
apt-get update -qq
apt-get install -y -qq \
  fortunes fortunes-min fortunes-de fortunes-es fortunes-it fortunes-br fortunes-ga \
  manpages-fr manpages-nl manpages-de manpages-es manpages-it manpages-da manpages-fi \
  manpages-nb manpages-sv manpages-pt-br util-linux-locales iso-codes
# Thin languages (cy, ga, gl): translation catalogs of LibreOffice and Firefox language packs,
# unpacked without their (large) dependencies.
mkdir -p "$ROOT/../debs"
cd "$ROOT/../debs"
apt-get download -qq libreoffice-l10n-cy libreoffice-l10n-ga libreoffice-l10n-gl \
  firefox-esr-l10n-cy firefox-esr-l10n-ga-ie firefox-esr-l10n-gl
for d in *.deb; do dpkg-deb -x "$d" "$ROOT"; done
echo "text sources ready under /usr/share and $ROOT"
