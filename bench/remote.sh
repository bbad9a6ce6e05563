#!/usr/bin/env bash
# imgc remote-cache benchmark: on the generated cold tree (as bench/run.sh's), a cold
# build that fills a remote cache, then warm-remote builds (fresh local cache, full
# remote) next to copying the same blobs: `cp -r` for a remote directory, `curl` for
# an HTTP remote (nginx on loopback, started and stopped by this script). In one run.
# Prints a Markdown table and writes it as the "Remote cache" section of
# bench/results.md (other sections are kept).
#
#   bench/remote.sh                       # full size (~1 GB tree; ~4 GB free in BENCH_DIR)
#   BENCH_SCALE=small bench/remote.sh     # quick smoke run with tiny sizes
#
# Environment:
#   BENCH_DIR      work directory (default /tmp/imgc-bench-remote); emptied at start, but
#                  only if it is empty or was made by a previous run of this script
#   BENCH_SCALE    full (default) or small
#   BENCH_RESULTS  the results file (default bench/results.md)
#   IMGC           an imgc binary to measure (default: cargo build --release, then a
#                  copy of target/release/imgc, so a rebuild during the run changes nothing)
#   Sizes and runs, each overriding the scale's default:
#   BENCH_COLD_IMAGES, BENCH_COLD_FILES, BENCH_COLD_FILE_SIZE, BENCH_RUNS, BENCH_WARMUP
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
GEN="$HERE/gen.py"
BENCH_DIR=${BENCH_DIR:-/tmp/imgc-bench-remote}
BENCH_SCALE=${BENCH_SCALE:-full}
RESULTS=${BENCH_RESULTS:-$HERE/results.md}

case "$BENCH_SCALE" in
  full)  d_ci=100 d_cf=10 d_cs=1048576 d_runs=5 ;;
  small) d_ci=10  d_cf=10 d_cs=1048576 d_runs=2 ;;
  *) echo "remote.sh: BENCH_SCALE must be full or small, not '$BENCH_SCALE'" >&2; exit 2 ;;
esac
COLD_IMAGES=${BENCH_COLD_IMAGES:-$d_ci}
COLD_FILES=${BENCH_COLD_FILES:-$d_cf}
COLD_FILE_SIZE=${BENCH_COLD_FILE_SIZE:-$d_cs}
RUNS=${BENCH_RUNS:-$d_runs}
WARMUP=${BENCH_WARMUP:-1}

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'remote.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

# ---------------------------------------------------------------- tools
nginx_bin() { if [ -x /usr/sbin/nginx ]; then echo /usr/sbin/nginx; else command -v nginx || true; fi; }
need_tools hyperfine python3 curl nginx time
NGINX_BIN=$(nginx_bin)
# Peak RSS: GNU time if present, else a python3 wrapper reading the children's ru_maxrss.
if [ -x /usr/bin/time ] && /usr/bin/time -f %M -o /dev/null true 2>/dev/null; then
  maxrss_run() { local out=$1; shift; /usr/bin/time -f %M -o "$out" "$@"; }
else
  maxrss_run() {
    local out=$1; shift
    python3 - "$out" "$@" <<'EOF'
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write("%d\n" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)
EOF
  }
fi

# ---------------------------------------------------------------- work dir
MARKER=.imgc-bench-remote-dir
if [ -e "$BENCH_DIR" ]; then
  [ -d "$BENCH_DIR" ] || die "BENCH_DIR $BENCH_DIR is not a directory"
  if [ -n "$(ls -A "$BENCH_DIR")" ] && [ ! -e "$BENCH_DIR/$MARKER" ]; then
    die "BENCH_DIR $BENCH_DIR is not empty and was not made by remote.sh; refusing to clean it"
  fi
  chmod -R u+w "$BENCH_DIR"   # blobs and their directories may be read-only
  find "$BENCH_DIR" -mindepth 1 -delete
fi
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
case "$BENCH_DIR" in *[[:space:]]*) die "BENCH_DIR $BENCH_DIR holds whitespace (hyperfine splits commands on it)" ;; esac
touch "$BENCH_DIR/$MARKER"

# nginx: started by start_nginx, stopped by its PID when the script exits.
NGINX_PID=
stop_nginx() {
  if [ -n "$NGINX_PID" ]; then
    kill -TERM "$NGINX_PID" 2>/dev/null || true   # the master stops its workers, then exits
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=
  fi
}
set -E
trap 'echo "remote.sh: failed at line $LINENO; logs and trees are in $BENCH_DIR" >&2' ERR
trap stop_nginx EXIT

# ---------------------------------------------------------------- imgc
setup_imgc
imgc_help=$("$IMGC_BIN" --help 2>&1 || true)
[[ $imgc_help == *--remote-cache* ]] ||
  die "$IMGC_BIN has no --remote-cache flag: this imgc predates the remote cache"
# Only the flags below choose the remote; the server is on loopback, never behind a proxy.
unset IMGC_CACHE_DIR IMGC_REMOTE_CACHE IMGC_REMOTE_CACHE_MODE IMGC_REMOTE_CACHE_CREDENTIALS
unset http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY

# ---------------------------------------------------------------- helpers

# summary JSONL IMAGES_OUT: from a --message-format json build, prints
# "ran remote_hits downloaded_bytes uploaded_bytes" and writes "label digest" of every
# materialized image to IMAGES_OUT (sorted). Fails on a failed action.
summary() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
summary, images = None, {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == "summary":
        summary = e
    elif e["event"] == "materialized":
        images[e["label"]] = e["digest"]
    elif e["event"] == "failed":
        sys.exit("build failed: %s: %s" % (e["label"], e["error"]))
if summary is None:
    sys.exit("no summary event in %s" % sys.argv[1])
missing = [k for k in ("remote_hits", "downloaded_bytes", "uploaded_bytes") if k not in summary]
if missing:
    sys.exit("the summary event has no %s: this imgc predates the remote cache" % ", ".join(missing))
with open(sys.argv[2], "w") as f:
    for label in sorted(images):
        f.write("%s %s\n" % (label, images[label]))
print(summary["ran"], summary["remote_hits"], summary["downloaded_bytes"], summary["uploaded_bytes"])
EOF
}

# dir_bytes DIR: "bytes files" of the regular files under DIR.
dir_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1; n++} END {print s + 0, n + 0}'; }

# A free port on 127.0.0.1 (a moment ago).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_nginx DIR: nginx as a Bazel-style HTTP cache (GET/HEAD/PUT under /cache/, served
# from DIR/www/cache), in the foreground of a background job, with its own config, pid
# file, logs and temp paths in DIR; sets NGINX_PID and NGINX_PORT once it accepts
# connections. A master with one worker per CPU, sendfile, no access log.
start_nginx() {
  local dir=$1 attempt i port user=""
  mkdir -p "$dir/www/cache" "$dir/tmp"
  [ "$(id -u)" = 0 ] && user="user root;"   # workers must write what root's dirs hold
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    port=$(free_port)
    cat >"$dir/nginx.conf" <<EOF
daemon off;
$user
worker_processes auto;
pid "$dir/nginx.pid";
lock_file "$dir/nginx.lock";
error_log "$dir/error.log" notice;
events {
    worker_connections 1024;
}
http {
    types { }
    default_type application/octet-stream;
    server_tokens off;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path "$dir/tmp/client_body";
    proxy_temp_path "$dir/tmp/proxy";
    fastcgi_temp_path "$dir/tmp/fastcgi";
    uwsgi_temp_path "$dir/tmp/uwsgi";
    scgi_temp_path "$dir/tmp/scgi";
    client_max_body_size 0;
    server {
        listen 127.0.0.1:$port;
        server_name localhost;
        root "$dir/www";
        location /cache/ {
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }
        location / {
            return 404;
        }
    }
}
EOF
    rm -f "$dir/nginx.pid" "$dir/error.log"
    "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" </dev/null >/dev/null 2>"$dir/stderr.log" &
    NGINX_PID=$!
    # Poll (bounded): the pid file is written once the port is bound.
    for i in $(seq 3000); do
      if grep -q 'Address already in use' "$dir/error.log" 2>/dev/null; then
        stop_nginx
        continue 2
      fi
      if ! kill -0 "$NGINX_PID" 2>/dev/null; then
        NGINX_PID=
        die "nginx exited at start: $(cat "$dir/stderr.log" "$dir/error.log" 2>/dev/null)"
      fi
      if [ "$(cat "$dir/nginx.pid" 2>/dev/null)" = "$NGINX_PID" ] &&
         [ "$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/cache/probe")" = 404 ]; then
        NGINX_PORT=$port
        return 0
      fi
      sleep 0.01
    done
    die "nginx did not answer on 127.0.0.1:$port: $(cat "$dir/error.log" 2>/dev/null)"
  done
  die "nginx found no free port on 127.0.0.1 in 10 attempts"
}

rss() { calc "'%.1f' % ($(tail -n 1 "$1") / 1024)"; }
mean_sd() { echo "$(f2 "$1") ± $(f2 "$2") s"; }

# ---------------------------------------------------------------- tree
log "1/4 tree: $COLD_IMAGES images x $COLD_FILES files of $COLD_FILE_SIZE bytes"
WS="$BENCH_DIR/ws"
python3 "$GEN" --out "$WS" --images "$COLD_IMAGES" --files-per-layer "$COLD_FILES" --file-size "$COLD_FILE_SIZE"
tree_bytes=$(cd "$WS" && find bases services -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
sleep 3   # every file older than 2 s, as in a real tree
LC="$BENCH_DIR/local-cache"
imgc() { "$IMGC_BIN" --cache-dir "$LC" -C "$WS" "$@"; }
# A fresh local cache and no output directory: a new CI runner.
FRESH=$(script fresh-local "rm -rf '$LC' '$WS/imgc-out'
sync")

# build_json NAME REMOTE_ARGS...: one build of //... with --message-format json into
# NAME.jsonl, with peak RSS into NAME.maxrss and wall time into t_NAME; sets S_RAN,
# S_HITS, S_DOWN, S_UP from its summary and writes its images to NAME.images.
build_json() {
  local name=$1; shift
  timed "t_$name" maxrss_run "$BENCH_DIR/$name.maxrss" \
    "$IMGC_BIN" --cache-dir "$LC" -C "$WS" "$@" build --message-format json //... \
    >"$BENCH_DIR/$name.jsonl" 2>"$BENCH_DIR/$name.log"
  summary "$BENCH_DIR/$name.jsonl" "$BENCH_DIR/$name.images" >"$BENCH_DIR/$name.summary"
  read -r S_RAN S_HITS S_DOWN S_UP <"$BENCH_DIR/$name.summary"
}

# cold_build NAME REMOTE_ARGS...: a cold build (fresh local cache, no output directory,
# page cache warm) that must make the images of the first cold build.
cold_build() {
  "$FRESH"
  warm_tree "$WS"
  build_json "$@"
  [ "$S_RAN" -gt 0 ] || die "$1: the cold build ran no action"
  [ ! -e "$BENCH_DIR/cold_plain.images" ] || cmp -s "$BENCH_DIR/cold_plain.images" "$BENCH_DIR/$1.images" ||
    die "$1: the cold build made other images than the one without remote (see $BENCH_DIR/$1.images)"
}

# warm_check NAME REMOTE_ARGS...: a warm-remote build (fresh local cache, no output
# directory) that must run no action and make the very images of the cold build.
warm_check() {
  "$FRESH"
  build_json "$@"
  [ "$S_RAN" = 0 ] || die "$1: the warm-remote build ran $S_RAN actions, not 0 (see $BENCH_DIR/$1.jsonl)"
  cmp -s "$BENCH_DIR/cold_plain.images" "$BENCH_DIR/$1.images" ||
    die "$1: the warm-remote build made other images than the cold build (see $BENCH_DIR/$1.images)"
}

# ---------------------------------------------------------------- 2. cold, no remote
log "2/4 cold build without a remote cache"
cold_build cold_plain --no-remote-cache
cold_ran=$S_RAN
nimages=$(wc -l <"$BENCH_DIR/cold_plain.images")

# ---------------------------------------------------------------- 3. directory remote
log "3/4 directory remote"
RD="$BENCH_DIR/remote-dir"
cold_build cold_dir --remote-cache "$RD" --remote-cache-mode read-write
[ "$S_RAN" = "$cold_ran" ] || die "the cold build filling the remote ran $S_RAN actions, not $cold_ran"
dcold_up=$S_UP
[ -d "$RD/cas" ] || die "the remote directory has no cas/ after the cold build"
read -r dcas_bytes dcas_files < <(dir_bytes "$RD/cas")
warm_check warm_dir_check --remote-cache "$RD" --remote-cache-mode read-write
dwarm_down=$S_DOWN
read -r t_dwarm t_dwarm_sd < <(bench warm-dir "$RUNS" "$WARMUP" "$FRESH" \
  "$IMGC_BIN --cache-dir $LC -C $WS --remote-cache $RD --remote-cache-mode read-write build //...")
CP="$BENCH_DIR/cp-dest"
read -r t_cp t_cp_sd < <(bench cp "$RUNS" "$WARMUP" "$(script fresh-cp "rm -rf '$CP'
sync")" "cp -r $RD/cas $CP")
read -r t_cat t_cat_sd < <(bench cat "$RUNS" "$WARMUP" "$(script nothing ":")" "find $RD/cas -type f -exec cat {} +")
rm -rf "$CP"

# ---------------------------------------------------------------- 4. HTTP remote
log "4/4 HTTP remote: nginx on 127.0.0.1"
NG="$BENCH_DIR/nginx"
start_nginx "$NG"
URL="http://127.0.0.1:$NGINX_PORT/cache"
cold_build cold_http --remote-cache "$URL" --remote-cache-mode read-write
[ "$S_RAN" = "$cold_ran" ] || die "the cold build filling the HTTP cache ran $S_RAN actions, not $cold_ran"
hcold_up=$S_UP
[ -d "$NG/www/cache/cas" ] || die "nothing was stored under cas/ on the HTTP cache"
read -r hcas_bytes hcas_files < <(dir_bytes "$NG/www/cache/cas")
warm_check warm_http_check --remote-cache "$URL" --remote-cache-mode read
hwarm_down=$S_DOWN
read -r t_hwarm t_hwarm_sd < <(bench warm-http "$RUNS" "$WARMUP" "$FRESH" \
  "$IMGC_BIN --cache-dir $LC -C $WS --remote-cache $URL --remote-cache-mode read build //...")
# curl fetching every blob of cas/, two transfers at a time, to a fresh directory.
CD="$BENCH_DIR/curl-dest"
(cd "$NG/www/cache/cas" && find . -type f | sort | sed 's|^\./||') |
  while read -r rel; do printf 'url = "%s/cas/%s"\noutput = "%s/%s"\n' "$URL" "$rel" "$CD" "$rel"; done \
  >"$BENCH_DIR/curl.config"
read -r t_curl t_curl_sd < <(bench curl "$RUNS" "$WARMUP" "$(script fresh-curl "rm -rf '$CD'
mkdir -p '$CD'
sync")" "curl -sS --fail --noproxy * --create-dirs -Z --parallel-max 2 -K $BENCH_DIR/curl.config")
read -r curl_bytes curl_files < <(dir_bytes "$CD")
[ "$curl_bytes $curl_files" = "$hcas_bytes $hcas_files" ] ||
  die "curl fetched $curl_files files, $curl_bytes bytes; the server holds $hcas_files, $hcas_bytes"
rm -rf "$CD"
stop_nginx

# ---------------------------------------------------------------- report
dratio=$(calc "$t_dwarm / $t_cp")
hratio=$(calc "$t_hwarm / $t_curl")
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
nginx_version=$("$NGINX_BIN" -v 2>&1 | sed 's|.*nginx/|nginx |')
curl_version=$(curl --version | head -n1 | awk '{print $1, $2}')

{
  echo "## Remote cache"
  echo
  echo "Scale \`$BENCH_SCALE\`, $(date -u +%Y-%m-%d). Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem RAM, Linux $(uname -r); imgc $IMGC_REV; $(hyperfine --version), $nginx_version, $curl_version. Tree: $COLD_IMAGES images x $COLD_FILES files of $COLD_FILE_SIZE bytes, $(mb "$tree_bytes") MB, $nimages images."
  echo
  echo "| measurement | imgc | baseline | ratio | aim | result |"
  echo "|---|---|---|---|---|---|"
  echo "| cold build filling an empty remote directory (read-write) vs cold build without remote | $(f2 "$t_cold_dir") s, $(rss "$BENCH_DIR/cold_dir.maxrss") MB RSS, $(mb "$dcold_up") MB uploaded | $(f2 "$t_cold_plain") s, $(rss "$BENCH_DIR/cold_plain.maxrss") MB RSS | $(f2 "$(calc "$t_cold_dir / $t_cold_plain")")x | | |"
  echo "| warm-remote build, directory: fresh local cache, full remote ($dcas_files blobs, $(mb "$dcas_bytes") MB) vs \`cp -r\` of its \`cas/\` | $(mean_sd "$t_dwarm" "$t_dwarm_sd"), $(rss "$BENCH_DIR/warm_dir_check.maxrss") MB RSS, $(mb "$dwarm_down") MB downloaded | $(mean_sd "$t_cp" "$t_cp_sd") | $(f2 "$dratio")x | ≤ 1.5x | $(pass "$dratio <= 1.5") |"
  echo "| reading the same blobs (\`cat\` to /dev/null) | | $(mean_sd "$t_cat" "$t_cat_sd") | $(f2 "$(calc "$t_dwarm / $t_cat")")x | | |"
  echo "| cold build filling an empty HTTP cache (nginx, read-write) vs cold build without remote | $(f2 "$t_cold_http") s, $(rss "$BENCH_DIR/cold_http.maxrss") MB RSS, $(mb "$hcold_up") MB uploaded | $(f2 "$t_cold_plain") s | $(f2 "$(calc "$t_cold_http / $t_cold_plain")")x | | |"
  echo "| warm-remote build, HTTP: fresh local cache, full cache ($hcas_files blobs, $(mb "$hcas_bytes") MB) vs \`curl -Z --parallel-max 2\` of the same blobs | $(mean_sd "$t_hwarm" "$t_hwarm_sd"), $(rss "$BENCH_DIR/warm_http_check.maxrss") MB RSS, $(mb "$hwarm_down") MB downloaded | $(mean_sd "$t_curl" "$t_curl_sd") | $(f2 "$hratio")x | | |"
  echo "| warm-remote builds ran no action and made the cold build's $nimages images | 0 actions (directory and HTTP) | 0 | | 0 | PASS |"
  echo
  echo "Cold builds: one run each, page cache warmed by reading the tree first, fresh local cache and no output directory; peak RSS from \`/usr/bin/time\`. Warm-remote builds and baselines: hyperfine mean ± σ of $RUNS runs after $WARMUP warm-up, each run with a fresh local cache and no output directory (\`--prepare\`), the directory read in the default read-write mode (blobs hard-linked; a read-only build copies them), the HTTP cache with \`--remote-cache-mode read\`; their RSS and the bytes downloaded are from one more run with \`--message-format json\`, which also checks that no action ran and that the image digests equal the cold build's. All directories are on one filesystem (\`$BENCH_DIR\`), the remote's files in the page cache. nginx: loopback, one worker per CPU, sendfile, no access log."
} >"$BENCH_DIR/section.md"

replace_section "$RESULTS" "Remote cache" "$BENCH_DIR/section.md"
echo >&2
cat "$BENCH_DIR/section.md"
