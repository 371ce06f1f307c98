#!/usr/bin/env bash
# Reproduces client/vendor/opus-recorder/ from the npm registry.
#
# The browser client encodes the microphone to Ogg Opus and decodes the server's Ogg Opus stream
# with opus-recorder (libopus + speex resampler compiled to WebAssembly), as Kyutai's moshi web
# client does. The files are committed so that the server needs neither network nor npm at run
# time; run this script only to check or to upgrade them:
#
#   scripts/vendor_client.sh            # re-create the vendored files at the pinned version
#   OPUS_RECORDER_VERSION=8.0.5 scripts/vendor_client.sh
#
# Needs: npm, tar. Touches nothing outside client/vendor/opus-recorder/.
set -euo pipefail

VERSION="${OPUS_RECORDER_VERSION:-8.0.5}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/client/vendor/opus-recorder"
FILES=(encoderWorker.min.js decoderWorker.min.js decoderWorker.min.wasm)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

( cd "$TMP" && npm pack --silent "opus-recorder@$VERSION" >/dev/null )
tar -xzf "$TMP/opus-recorder-$VERSION.tgz" -C "$TMP"

rm -rf "$DEST"
mkdir -p "$DEST"
for f in "${FILES[@]}"; do
  cp "$TMP/package/dist/$f" "$DEST/$f"
done
cp "$TMP/package/LICENSE.md" "$DEST/LICENSE.md"

{
  echo "opus-recorder $VERSION (https://github.com/chris-rudmin/opus-recorder), MIT; bundles libopus and"
  echo "the speex resampler (BSD), see LICENSE.md. Produced by scripts/vendor_client.sh from"
  echo "\`npm pack opus-recorder@$VERSION\`: dist/{$(IFS=,; echo "${FILES[*]}")} copied unchanged."
  echo
  echo "sha256:"
  ( cd "$DEST" && sha256sum "${FILES[@]}" LICENSE.md )
} > "$DEST/README.md"

echo "vendored opus-recorder $VERSION into ${DEST#$ROOT/}"
