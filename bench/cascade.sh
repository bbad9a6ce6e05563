#!/usr/bin/env bash
# imgc cascade benchmark: N services on one base image, built by imgc and, side by
# side in the same run, by buildah from equivalent Containerfiles: cold, no-op, and
# the base cascade (one file of the base changed, then everything rebuilt). Also
# checks that `imgc build --dry-run` plans exactly what the cascade build then runs.
# Prints a Markdown table and writes it as the "Cascade" section of
# bench/results.md (other sections are kept).
#
#   bench/cascade.sh                       # full size: 100 services
#   BENCH_SCALE=small bench/cascade.sh     # quick smoke run: 10 services
#   IMGC=target/debug/imgc BENCH_SCALE=small bench/cascade.sh   # without a release build
#
# Environment:
#   BENCH_DIR      work directory (default /tmp/imgc-bench-cascade); emptied at start, but
#                  only if it is empty or was made by a previous run of this script
#   BENCH_SCALE    full (default) or small
#   BENCH_RESULTS  the results file (default bench/results.md)
#   IMGC           an imgc binary to measure (default: cargo build --release, then a
#                  copy of target/release/imgc, so a rebuild during the run changes nothing)
#   BUILDAH_DRIVER buildah's storage driver: overlay or vfs (default: overlay if a probe
#                  build works here, else vfs)
#   BUILDAH_JOBS   services buildah builds at once (default: the number of CPUs, as imgc)
#   Sizes and runs, each overriding the scale's default:
#   BENCH_SERVICES, BENCH_SERVICE_FILES, BENCH_SERVICE_FILE_SIZE, BENCH_BASE_FILES,
#   BENCH_BASE_FILE_SIZE, BENCH_RUNS, BENCH_WARMUP (imgc), BENCH_BUILDAH_RUNS (buildah)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
GEN="$HERE/gen.py"
BENCH_DIR=${BENCH_DIR:-/tmp/imgc-bench-cascade}
BENCH_SCALE=${BENCH_SCALE:-full}
RESULTS=${BENCH_RESULTS:-$HERE/results.md}

case "$BENCH_SCALE" in
  full)  d_n=100 d_runs=10 d_bruns=3 ;;
  small) d_n=10  d_runs=3  d_bruns=2 ;;
  *) echo "cascade.sh: BENCH_SCALE must be full or small, not '$BENCH_SCALE'" >&2; exit 2 ;;
esac
SERVICES=${BENCH_SERVICES:-$d_n}
SERVICE_FILES=${BENCH_SERVICE_FILES:-3}
SERVICE_FILE_SIZE=${BENCH_SERVICE_FILE_SIZE:-65536}
BASE_FILES=${BENCH_BASE_FILES:-20}
BASE_FILE_SIZE=${BENCH_BASE_FILE_SIZE:-262144}
RUNS=${BENCH_RUNS:-$d_runs}
WARMUP=${BENCH_WARMUP:-1}
BUILDAH_RUNS=${BENCH_BUILDAH_RUNS:-$d_bruns}
BUILDAH_JOBS=${BUILDAH_JOBS:-$(nproc)}

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'cascade.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ "$SERVICES" -ge 1 ] || die "BENCH_SERVICES must be at least 1"

# ---------------------------------------------------------------- tools
need_tools hyperfine python3 buildah
# buildah's storage is set up here as root (its own --root and --runroot under BENCH_DIR).
[ "$(id -u)" = 0 ] || die "run as root: buildah builds here with its own storage, as root"

# ---------------------------------------------------------------- work dir
MARKER=.imgc-bench-cascade-dir
BROOT="$BENCH_DIR/buildah/root"
BRUN="$BENCH_DIR/buildah/runroot"
# Unmounts what buildah may have left mounted under $BENCH_DIR/buildah (a killed run).
unmount_buildah() {
  local m
  for m in $(awk -v d="$1" 'index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}
if [ -e "$BENCH_DIR" ]; then
  [ -d "$BENCH_DIR" ] || die "BENCH_DIR $BENCH_DIR is not a directory"
  if [ -n "$(ls -A "$BENCH_DIR")" ] && [ ! -e "$BENCH_DIR/$MARKER" ]; then
    die "BENCH_DIR $BENCH_DIR is not empty and was not made by cascade.sh; refusing to clean it"
  fi
  unmount_buildah "$(cd "$BENCH_DIR" && pwd)/buildah"
  chmod -R u+w "$BENCH_DIR" 2>/dev/null || true   # blobs and their directories may be read-only
  find "$BENCH_DIR" -mindepth 1 -delete
fi
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
BROOT="$BENCH_DIR/buildah/root"
BRUN="$BENCH_DIR/buildah/runroot"
case "$BENCH_DIR" in *[[:space:]]*) die "BENCH_DIR $BENCH_DIR holds whitespace (hyperfine splits commands on it)" ;; esac
touch "$BENCH_DIR/$MARKER"
set -E
trap 'echo "cascade.sh: failed at line $LINENO; logs and trees are in $BENCH_DIR" >&2' ERR

# ---------------------------------------------------------------- imgc
setup_imgc
imgc_help=$("$IMGC_BIN" build --help 2>&1 || true)
[[ $imgc_help == *--dry-run* ]] || die "$IMGC_BIN build has no --dry-run flag: this imgc predates the cascade plan"
unset IMGC_CACHE_DIR IMGC_REMOTE_CACHE IMGC_REMOTE_CACHE_MODE IMGC_REMOTE_CACHE_CREDENTIALS SOURCE_DATE_EPOCH

# ---------------------------------------------------------------- helpers

mean_sd() { echo "$(f3 "$1") ± $(f3 "$2") s"; }

# ---------------------------------------------------------------- 1. tree
log "1/4 tree: a base of $BASE_FILES files of $BASE_FILE_SIZE bytes, $SERVICES services of $SERVICE_FILES files of $SERVICE_FILE_SIZE bytes, with Containerfiles"
WS="$BENCH_DIR/ws"
python3 "$GEN" --out "$WS" --images "$SERVICES" --files-per-layer "$SERVICE_FILES" \
  --file-size "$SERVICE_FILE_SIZE" --base-files "$BASE_FILES" --base-file-size "$BASE_FILE_SIZE" \
  --containerfiles
tree_bytes=$(cd "$WS" && find bases services -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
sleep 3   # every file older than 2 s, as in a real tree
# The base change: a line appended to one file of the base layer, different every time,
# so each change is a real one (for both tools).
CHANGED="bases/files/d000/f00000.txt"
[ -f "$WS/$CHANGED" ] || die "the generated tree has no $CHANGED"
CHANGE=$(script change-base "date +'# changed at %s.%N' >>'$WS/$CHANGED'")
NOTHING=$(script nothing ":")
SVC_LABELS=$(cd "$WS/services" && for d in svc-*; do echo "//services/$d:$d"; done)

# ---------------------------------------------------------------- 2. imgc
log "2/4 imgc: cold, no-op, plan, cascade"
LC="$BENCH_DIR/imgc-cache"
IMGC_BUILD="$IMGC_BIN --cache-dir $LC -C $WS build //..."
imgc() { "$IMGC_BIN" --cache-dir "$LC" -C "$WS" "$@"; }

# check_build JSONL EXPECT: a --message-format json build (or dry run) ran (or planned)
# exactly as EXPECT says: `cold` (everything ran), `noop` (nothing ran), `cascade` (the
# base layer ran, then the base image and every service image; no service layer), or
# `plan PLAN.jsonl` (the build ran exactly what that dry run planned). Prints a summary.
check_build() {
  python3 - "$SERVICES" "$@" <<'EOF'
import json, sys
services, path, expect = int(sys.argv[1]), sys.argv[2], sys.argv[3]
events = [json.loads(l) for l in open(path)]
failed = [e for e in events if e["event"] in ("failed", "skipped")]
if failed:
    sys.exit("%s: %s %s: %s" % (path, failed[0]["event"], failed[0]["label"], failed[0].get("error", failed[0].get("reason"))))
ran = sorted(e["label"] for e in events if e["event"] == "finished" and not e["cached"])
cached = sorted(e["label"] for e in events if e["event"] == "finished" and e["cached"])
would = sorted(e["label"] for e in events if e["event"] == "would-run")
svcs = ["//services/svc-%04d:svc-%04d" % (i, i) for i in range(services)]
images = sorted(["//bases:base"] + svcs)
cascade = sorted(["//bases:files"] + images)
if expect == "cold":
    assert len(ran) == 3 * services + 2 and not cached, (len(ran), len(cached))
    print("%d actions" % len(ran))
elif expect == "noop":
    assert not ran and len(cached) == 3 * services + 2, (ran, len(cached))
    print("0 actions")
elif expect == "cascade":
    assert ran == cascade, ("ran", ran)
    print("%d actions: `//bases:files` and %d images, 0 service layers" % (len(ran), len(images)))
elif expect == "dry":
    plan = [e for e in events if e["event"] == "plan"]
    assert len(plan) == 1 and events[-1]["event"] == "plan", "no closing plan event"
    plan = plan[0]
    assert not ran, ("a dry run ran", ran)
    assert plan["rebuild"] == ["//bases:files"], plan["rebuild"]
    assert plan["reassemble"] == images, plan["reassemble"]
    assert plan["counts"]["reuse"] == 2 * services and plan["counts"]["fail"] == 0, plan["counts"]
    assert would == cascade, would
    print("%d layer to rebuild, %d images to re-assemble, %d targets reused" % (
        len(plan["rebuild"]), len(plan["reassemble"]), plan["counts"]["reuse"]))
elif expect == "plan":
    planned = [json.loads(l) for l in open(sys.argv[4])]
    plan = [e for e in planned if e["event"] == "plan"][0]
    assert ran == sorted(plan["rebuild"] + plan["reassemble"] + plan["reimport"]), ("ran", ran)
    assert cached == plan["reuse"], ("cached", cached)
    print("the build ran exactly the plan's %d actions" % len(ran))
else:
    sys.exit("unknown expectation " + expect)
EOF
}

FRESH_IMGC=$(script fresh-imgc "rm -rf '$LC' '$WS/imgc-out'
sync")
"$FRESH_IMGC"
warm_tree "$WS"
timed t_imgc_cold imgc build --message-format json //... >"$BENCH_DIR/imgc-cold.jsonl" 2>"$BENCH_DIR/imgc-cold.log"
imgc_cold_what=$(check_build "$BENCH_DIR/imgc-cold.jsonl" cold)
# The stat memo remembers only files (and blobs) older than 2 s: build again after a pause.
sleep 3
imgc build //... >/dev/null 2>&1
sleep 3
imgc build --message-format json //... >"$BENCH_DIR/imgc-noop.jsonl" 2>"$BENCH_DIR/imgc-noop.log"
imgc_noop_what=$(check_build "$BENCH_DIR/imgc-noop.jsonl" noop)
read -r t_imgc_noop t_imgc_noop_sd < <(bench imgc-noop "$RUNS" "$WARMUP" "$NOTHING" "$IMGC_BUILD")

# The plan of the cascade: one change, then dry runs (they write nothing, so every run
# plans the same), then the build, which must run exactly what was planned.
"$CHANGE"
imgc build --dry-run --message-format json //... >"$BENCH_DIR/imgc-plan.jsonl" 2>"$BENCH_DIR/imgc-plan.log"
imgc_plan_what=$(check_build "$BENCH_DIR/imgc-plan.jsonl" dry)
read -r t_imgc_plan t_imgc_plan_sd < <(bench imgc-plan "$RUNS" "$WARMUP" "$NOTHING" \
  "$IMGC_BIN --cache-dir $LC -C $WS build --dry-run //...")
imgc build --message-format json //... >"$BENCH_DIR/imgc-cascade.jsonl" 2>"$BENCH_DIR/imgc-cascade.log"
imgc_cascade_what=$(check_build "$BENCH_DIR/imgc-cascade.jsonl" cascade)
imgc_plan_match=$(check_build "$BENCH_DIR/imgc-cascade.jsonl" plan "$BENCH_DIR/imgc-plan.jsonl")
# The cascade, timed: before every run, a new change of the same base file.
read -r t_imgc_casc t_imgc_casc_sd < <(bench imgc-cascade "$RUNS" "$WARMUP" "$CHANGE" "$IMGC_BUILD")
"$CHANGE"
imgc build --message-format json //... >"$BENCH_DIR/imgc-cascade-last.jsonl" 2>"$BENCH_DIR/imgc-cascade-last.log"
check_build "$BENCH_DIR/imgc-cascade-last.jsonl" cascade >/dev/null

# ---------------------------------------------------------------- 3. buildah
log "3/4 buildah: cold, no-op, cascade"
# Storage driver: overlay when a probe (a base from scratch, an image FROM it) builds here.
if [ -z "${BUILDAH_DRIVER:-}" ]; then
  P="$BENCH_DIR/buildah-probe"
  mkdir -p "$P/ctx"
  echo probe >"$P/ctx/x"
  printf 'FROM scratch\nCOPY x /x\n' >"$P/ctx/Base"
  printf 'FROM localhost/imgc-bench-probe/base\nCOPY x /y\n' >"$P/ctx/Top"
  pb() { buildah --root "$P/root" --runroot "$P/runroot" --storage-driver overlay "$@"; }
  if pb bud --layers --quiet -t localhost/imgc-bench-probe/base -f "$P/ctx/Base" "$P/ctx" >"$P/log" 2>&1 &&
     pb bud --layers --quiet -t localhost/imgc-bench-probe/top -f "$P/ctx/Top" "$P/ctx" >>"$P/log" 2>&1; then
    BUILDAH_DRIVER=overlay
  else
    BUILDAH_DRIVER=vfs
    log "buildah's overlay driver does not work here (see $P/log): using vfs"
  fi
  pb rmi --all --force >/dev/null 2>&1 || true
  unmount_buildah "$P"
  rm -rf "$P"
fi
B="buildah --root $BROOT --runroot $BRUN --storage-driver $BUILDAH_DRIVER"
buildah_version=$(buildah --version | awk '{print $1, $3}')
# One build of everything: the base, then the services, $BUILDAH_JOBS at a time.
BUILDAH_ALL=$(script buildah-all "$B bud --layers --quiet -t localhost/imgc-bench/base -f '$WS/bases/Containerfile' '$WS/bases' >/dev/null
cd '$WS/services'
ls -d svc-* | xargs -P $BUILDAH_JOBS -I{} $B bud --layers --quiet -t localhost/imgc-bench/{} -f '$WS/services/{}/Containerfile' '$WS/services/{}' >/dev/null")
FRESH_BUILDAH=$(script fresh-buildah "$B rm --all >/dev/null 2>&1 || true
$B rmi --all --force >/dev/null 2>&1 || true
rm -rf '$BROOT' '$BRUN'
sync")
# buildah_ids OUT: "name id" of every tagged image of the benchmark, sorted.
buildah_ids() {
  $B images --no-trunc --noheading --format '{{.Name}} {{.ID}}' | grep '^localhost/imgc-bench/' | sort >"$1"
}

"$FRESH_BUILDAH"
warm_tree "$WS"
timed t_b_cold "$BUILDAH_ALL"
buildah_ids "$BENCH_DIR/buildah-cold.ids"
[ "$(wc -l <"$BENCH_DIR/buildah-cold.ids")" = $((SERVICES + 1)) ] ||
  die "buildah made $(wc -l <"$BENCH_DIR/buildah-cold.ids") images, not $((SERVICES + 1)) (see $BENCH_DIR/buildah-cold.ids)"
read -r t_b_noop t_b_noop_sd < <(bench buildah-noop "$BUILDAH_RUNS" 0 "$NOTHING" "$BUILDAH_ALL")
buildah_ids "$BENCH_DIR/buildah-noop.ids"
cmp -s "$BENCH_DIR/buildah-cold.ids" "$BENCH_DIR/buildah-noop.ids" ||
  die "buildah's no-op builds changed image IDs (see $BENCH_DIR/buildah-*.ids)"
read -r t_b_casc t_b_casc_sd < <(bench buildah-cascade "$BUILDAH_RUNS" 0 "$CHANGE" "$BUILDAH_ALL")
buildah_ids "$BENCH_DIR/buildah-cascade.ids"
# Every image (the base and each service) must have a new ID: a real cascade.
python3 - "$BENCH_DIR/buildah-noop.ids" "$BENCH_DIR/buildah-cascade.ids" <<'EOF'
import sys
before = dict(l.split() for l in open(sys.argv[1]))
after = dict(l.split() for l in open(sys.argv[2]))
assert before.keys() == after.keys(), "other images after the cascade"
same = [n for n in before if before[n] == after[n]]
if same:
    sys.exit("buildah's cascade left %d images as they were: %s" % (len(same), ", ".join(same[:5])))
EOF
"$FRESH_BUILDAH"

# ---------------------------------------------------------------- 4. report
log "4/4 report"
cold_ratio=$(calc "$t_b_cold / $t_imgc_cold")
noop_ratio=$(calc "$t_b_noop / $t_imgc_noop")
casc_ratio=$(calc "$t_b_casc / $t_imgc_casc")
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
images=$((SERVICES + 1))

{
  echo "## Cascade"
  echo
  echo "Scale \`$BENCH_SCALE\`, $(date -u +%Y-%m-%d). Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem RAM, Linux $(uname -r); imgc $IMGC_REV; $buildah_version (storage driver $BUILDAH_DRIVER, $BUILDAH_JOBS builds at once); $(hyperfine --version). Tree: a base of $BASE_FILES files of $BASE_FILE_SIZE bytes and $SERVICES services of $SERVICE_FILES files of $SERVICE_FILE_SIZE bytes each, $(mb "$tree_bytes") MB, $images images."
  echo
  echo "| measurement | imgc | buildah | buildah / imgc | aim | result |"
  echo "|---|---|---|---|---|---|"
  echo "| cold build: everything, empty cache (imgc) or storage (buildah) | $(f2 "$t_imgc_cold") s ($imgc_cold_what) | $(f2 "$t_b_cold") s ($images images) | $(f2 "$cold_ratio")x | | |"
  echo "| no-op build: everything again, nothing changed | $(mean_sd "$t_imgc_noop" "$t_imgc_noop_sd") ($imgc_noop_what) | $(mean_sd "$t_b_noop" "$t_b_noop_sd") (same image IDs) | $(f2 "$noop_ratio")x | | |"
  echo "| cascade: one line appended to one file of the base, then everything rebuilt | $(mean_sd "$t_imgc_casc" "$t_imgc_casc_sd") ($imgc_cascade_what) | $(mean_sd "$t_b_casc" "$t_b_casc_sd") (the base and $SERVICES images rebuilt: every image ID new) | $(f2 "$casc_ratio")x | ≥ 50x | $(pass "$casc_ratio >= 50") |"
  echo "| cascade plan: \`imgc build --dry-run\` after the change | $(mean_sd "$t_imgc_plan" "$t_imgc_plan_sd") ($imgc_plan_what) | | | the build runs the plan | PASS: $imgc_plan_match |"
  echo
  echo "Both tools build the same files into the same images from the same tree (\`gen.py --containerfiles\`: for buildah, each package's Containerfile COPYs the files its BUILD.kdl copies and sets the same config, each service \`FROM\` the base image; no RUN step). imgc: \`imgc build //...\` (one process, $(nproc) jobs), layouts written to \`imgc-out\`. buildah: \`buildah bud --layers\` of the base, then of the services, $BUILDAH_JOBS at a time (\`xargs -P\`), in its own storage under \`$BENCH_DIR\`. Cold builds: one run each, page cache warmed by reading the tree first. No-op and cascade: hyperfine mean ± σ, imgc $RUNS runs after $WARMUP warm-up, buildah $BUILDAH_RUNS runs; before every cascade run, a new line is appended to \`$CHANGED\` (\`--prepare\`), so every run is a real cascade. Checks: imgc's JSON events (no-op: no action; cascade: exactly \`//bases:files\` and the $images images); buildah's image IDs (no-op: unchanged; cascade: all new). The plan row: \`imgc build --dry-run\` after one change (hyperfine; a dry run writes nothing, so every run plans the same), checked against the JSON events of the build that followed."
} >"$BENCH_DIR/section.md"

replace_section "$RESULTS" "Cascade" "$BENCH_DIR/section.md"
echo >&2
cat "$BENCH_DIR/section.md"
