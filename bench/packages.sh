#!/usr/bin/env bash
# imgc benchmark: bytes stored for ten images built from overlapping sets of real Debian 12
# packages, one layer per package (imgc's `packages` in an image) against one layer per image
# holding the same closure (apko's default; imgc's `layer { packages ... }`), side by side.
#
#   bench/packages.sh
#
# Environment:
#   BENCH_DIR      work directory (default /tmp/imgc-bench-packages); emptied at start
#   IMGC           an imgc binary (default: cargo build --release, then target/release/imgc)
#   IMGC_TEST_DEBS the real .debs (default target/test-debs; fetched by
#                  tests/fixtures/debian/fetch-debs.sh when missing)
# Needs python3, dpkg-dev and gnupg (tests/fixtures/debian/make_repo.py builds a local signed
# repository of those packages; python's http.server serves it on 127.0.0.1, stopped by its PID).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/imgc-bench-packages}
DEBS=${IMGC_TEST_DEBS:-$REPO/target/test-debs}

die() { printf 'packages.sh: %s\n' "$*" >&2; exit 1; }
for t in python3 dpkg-scanpackages gpg; do
  command -v "$t" >/dev/null 2>&1 || die "needs $t (apt-get install python3 dpkg-dev gnupg)"
done
"$REPO/tests/fixtures/debian/fetch-debs.sh" "$DEBS"
if [ -z "${IMGC:-}" ]; then
  (cd "$REPO" && cargo build --release --quiet)
  IMGC="$REPO/target/release/imgc"
fi

MARKER=.imgc-bench-packages
if [ -e "$BENCH_DIR" ]; then
  [ -e "$BENCH_DIR/$MARKER" ] || [ -z "$(ls -A "$BENCH_DIR")" ] ||
    die "$BENCH_DIR is not empty and was not made by this script"
  rm -rf "$BENCH_DIR"
fi
mkdir -p "$BENCH_DIR" && touch "$BENCH_DIR/$MARKER"

python3 "$REPO/tests/fixtures/debian/make_repo.py" --out "$BENCH_DIR/repo" --debs "$DEBS" 2>/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$BENCH_DIR/repo" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
  sleep 0.1
done

# Ten images, overlapping as a fleet's do: a libc everywhere, TLS in most, a few runtimes.
SETS=(
  "libc6"
  "libc6 libssl3"
  "libc6 libssl3 ca-certificates"
  "libc6 tzdata"
  "libc6 libssl3 openssl"
  "ca-certificates tzdata"
  "redis-server"
  "redis-tools libssl3"
  "libc6 zlib1g liblz4-1 libzstd1"
  "perl-base tzdata"
)

workspace() { # DIR MODE (image|layer)
  local dir=$1 mode=$2 i=0 set quoted
  mkdir -p "$dir/keys" "$dir/fleet"
  cp "$BENCH_DIR/repo/keyring.gpg" "$dir/keys/repo.gpg"
  cat >"$dir/imgc.kdl" <<EOF
workspace {
    output-dir "imgc-out"
}
debian "bookworm" {
    url "http://127.0.0.1:$port"
    suite "bookworm"
    components "main"
    arch "amd64"
    keyring "keys/repo.gpg"
}
EOF
  : >"$dir/fleet/BUILD.kdl"
  for set in "${SETS[@]}"; do
    i=$((i + 1))
    quoted=$(printf '"%s" ' $set)
    if [ "$mode" = image ]; then
      printf 'image "img%02d" {\n    from "scratch"\n    packages %s\n}\n' "$i" "$quoted" >>"$dir/fleet/BUILD.kdl"
    else
      printf 'image "img%02d" {\n    from "scratch"\n    layer {\n        packages %s\n    }\n}\n' "$i" "$quoted" >>"$dir/fleet/BUILD.kdl"
    fi
  done
}

declare -A stored alone blobs layers
for mode in image layer; do
  ws="$BENCH_DIR/ws-$mode"
  workspace "$ws" "$mode"
  "$IMGC" --cache-dir "$BENCH_DIR/cache-$mode" -C "$ws" lock >/dev/null
  "$IMGC" --cache-dir "$BENCH_DIR/cache-$mode" -C "$ws" build //... >/dev/null 2>&1 ||
    die "build of the $mode variant failed"
  "$IMGC" --cache-dir "$BENCH_DIR/cache-$mode" -C "$ws" report --output json //... >"$BENCH_DIR/report-$mode.json"
  read -r stored[$mode] alone[$mode] blobs[$mode] layers[$mode] < <(python3 - "$BENCH_DIR/report-$mode.json" <<'EOF'
import json, sys
f = json.load(open(sys.argv[1]))["fleet"]
print(f["stored_bytes"], f["alone_bytes"], f["blobs"], f["layers"])
EOF
)
done
cmp -s <(grep '^package ' "$BENCH_DIR/ws-image/imgc.lock") <(grep '^package ' "$BENCH_DIR/ws-layer/imgc.lock") ||
  die "the two variants locked different packages"
npkgs=$(grep -c '^package ' "$BENCH_DIR/ws-image/imgc.lock")

mb() { python3 -c "print('%.1f' % ($1 / 1e6))"; }
{
  echo "Ten images from overlapping sets of real Debian 12 packages ($npkgs packages locked), $(date -u +%Y-%m-%d), imgc $(cd "$REPO" && git rev-parse --short HEAD). Bytes are compressed layer, config and manifest blobs (gzip); \"alone\" is what the ten images weigh pulled one by one, \"stored\" what a registry or node holds once blobs are shared (\`imgc report\`)."
  echo
  echo "| layering | distinct blobs | distinct layers | alone | stored | stored / one layer per image |"
  echo "|---|---|---|---|---|---|"
  for mode in image layer; do
    name=$([ "$mode" = image ] && echo "one layer per package (imgc \`packages\` in the image)" || echo "one layer per image (\`layer { packages ... }\`, apko's default)")
    echo "| $name | ${blobs[$mode]} | ${layers[$mode]} | $(mb "${alone[$mode]}") MB | $(mb "${stored[$mode]}") MB | $(python3 -c "print('%.2f' % (${stored[$mode]} / ${stored[layer]}))")x |"
  done
} | tee "$HERE/results-packages.md"
