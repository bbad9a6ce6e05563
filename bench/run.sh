#!/usr/bin/env bash
# imgc benchmark: imgc against git and tar|gzip / tar|zstd on the same generated
# trees, in one run. Prints a Markdown table and writes it to bench/results.md.
#
#   bench/run.sh                       # full size (~1 GB cold build; ~2 GB free in BENCH_DIR)
#   BENCH_SCALE=small bench/run.sh     # quick smoke run with tiny sizes
#
# Environment:
#   BENCH_DIR      work directory (default /tmp/imgc-bench); emptied at start, but only
#                  if it is empty or was made by a previous run of this script
#   BENCH_SCALE    full (default) or small
#   BENCH_RESULTS  where to write the table (default bench/results.md)
#   IMGC           an imgc binary to measure (default: cargo build --release, then a
#                  copy of target/release/imgc, so a rebuild during the run changes nothing)
#   Sizes, each overriding the scale's default:
#   BENCH_FRONTEND_PACKAGES, BENCH_NOOP_IMAGES, BENCH_NOOP_FILES, BENCH_NOOP_FILE_SIZE,
#   BENCH_COLD_IMAGES, BENCH_COLD_FILES, BENCH_COLD_FILE_SIZE, BENCH_RUNS, BENCH_WARMUP
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
GEN="$HERE/gen.py"
BENCH_DIR=${BENCH_DIR:-/tmp/imgc-bench}
BENCH_SCALE=${BENCH_SCALE:-full}
RESULTS=${BENCH_RESULTS:-$HERE/results.md}

case "$BENCH_SCALE" in
  full)  d_pk=1000 d_ni=1000 d_nf=10 d_ns=1024 d_ci=100 d_cf=10 d_cs=1048576 ;;
  small) d_pk=100  d_ni=100  d_nf=10 d_ns=1024 d_ci=10  d_cf=10 d_cs=1048576 ;;
  *) echo "run.sh: BENCH_SCALE must be full or small, not '$BENCH_SCALE'" >&2; exit 2 ;;
esac
FRONTEND_PACKAGES=${BENCH_FRONTEND_PACKAGES:-$d_pk}
NOOP_IMAGES=${BENCH_NOOP_IMAGES:-$d_ni}
NOOP_FILES=${BENCH_NOOP_FILES:-$d_nf}
NOOP_FILE_SIZE=${BENCH_NOOP_FILE_SIZE:-$d_ns}
COLD_IMAGES=${BENCH_COLD_IMAGES:-$d_ci}
COLD_FILES=${BENCH_COLD_FILES:-$d_cf}
COLD_FILE_SIZE=${BENCH_COLD_FILE_SIZE:-$d_cs}
RUNS=${BENCH_RUNS:-10}
WARMUP=${BENCH_WARMUP:-2}

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

# ---------------------------------------------------------------- tools
need_tools hyperfine zstd git python3 tar gzip time
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
MARKER=.imgc-bench-dir
if [ -e "$BENCH_DIR" ]; then
  [ -d "$BENCH_DIR" ] || die "BENCH_DIR $BENCH_DIR is not a directory"
  if [ -n "$(ls -A "$BENCH_DIR")" ] && [ ! -e "$BENCH_DIR/$MARKER" ]; then
    die "BENCH_DIR $BENCH_DIR is not empty and was not made by run.sh; refusing to clean it"
  fi
  find "$BENCH_DIR" -mindepth 1 -delete
fi
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
touch "$BENCH_DIR/$MARKER"
set -E
trap 'echo "run.sh: failed at line $LINENO; logs and trees are in $BENCH_DIR" >&2' ERR

# ---------------------------------------------------------------- imgc
setup_imgc

# ---------------------------------------------------------------- helpers

# Commit a tree to a fresh git repository, quietly, with a fixed identity and date.
git_commit_tree() {
  (
    cd "$1"
    export GIT_AUTHOR_NAME=imgc-bench GIT_AUTHOR_EMAIL=bench@example.invalid \
           GIT_COMMITTER_NAME=imgc-bench GIT_COMMITTER_EMAIL=bench@example.invalid \
           GIT_AUTHOR_DATE=2023-11-14T22:13:20Z GIT_COMMITTER_DATE=2023-11-14T22:13:20Z
    git -c init.defaultBranch=main init -q .
    git add -A
    git -c commit.gpgsign=false commit -q -m "bench tree"
  )
}

# hyperfine_pair NAME DIR CMD_A CMD_B: both commands in DIR; prints "mean_a sd_a mean_b sd_b" (s)
hyperfine_pair() {
  local name=$1 dir=$2 a=$3 b=$4 json="$BENCH_DIR/$1.json"
  (cd "$dir" && hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" \
      --export-json "$json" -n imgc "$a" -n git "$b" >&2)
  python3 - "$json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
print(r[0]["mean"], r[0]["stddev"] or 0, r[1]["mean"], r[1]["stddev"] or 0)
EOF
}

# layer_bytes OUTDIR: the sum of the sizes of the distinct layer blobs of every layout.
layer_bytes() {
  python3 - "$1" <<'EOF'
import json, os, sys
layers = {}
for root, dirs, files in os.walk(sys.argv[1]):
    if "index.json" not in files or "oci-layout" not in files:
        continue
    dirs[:] = []
    index = json.load(open(os.path.join(root, "index.json")))
    for m in index["manifests"]:
        algo, hexd = m["digest"].split(":")
        manifest = json.load(open(os.path.join(root, "blobs", algo, hexd)))
        for l in manifest["layers"]:
            layers[l["digest"]] = l["size"]
print(sum(layers.values()), len(layers))
EOF
}

# build_json_summary FILE: "ran images_ran labels_ran(comma separated)" from --message-format json
build_events() {
  python3 - "$1" <<'EOF'
import json, sys
ran, summary = [], None
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == "finished" and not e["cached"]:
        ran.append((e["kind"], e["label"]))
    elif e["event"] == "summary":
        summary = e
    elif e["event"] == "failed":
        sys.exit("build failed: %s: %s" % (e["label"], e["error"]))
assert summary is not None, "no summary event"
assert summary["ran"] == len(ran), "summary says %d ran, %d finished uncached" % (summary["ran"], len(ran))
images = sum(1 for k, _ in ran if k == "image")
print(len(ran), images, ",".join(sorted(l for _, l in ran)) or "-")
EOF
}

ms() { calc "'%.1f' % ($1 * 1000)"; }
f1() { calc "'%.1f' % ($1)"; }

# ---------------------------------------------------------------- 1. front end
log "1/6 front end: $FRONTEND_PACKAGES packages"
FE="$BENCH_DIR/frontend"
python3 "$GEN" --out "$FE" --frontend-only --packages "$FRONTEND_PACKAGES"
git_commit_tree "$FE"
"$IMGC_BIN" --cache-dir "$BENCH_DIR/cache-frontend" -C "$FE" check //... >/dev/null
read -r fe_imgc fe_imgc_sd fe_git fe_git_sd < <(hyperfine_pair frontend "$FE" \
  "$IMGC_BIN --cache-dir $BENCH_DIR/cache-frontend check //..." "git status -uno")
fe_files=$(cd "$FE" && git ls-files | wc -l)

# ---------------------------------------------------------------- 2. no-op build
log "2/6 no-op build: $NOOP_IMAGES images x $NOOP_FILES files of $NOOP_FILE_SIZE bytes"
NO="$BENCH_DIR/noop"
NOC="$BENCH_DIR/cache-noop"
python3 "$GEN" --out "$NO" --images "$NOOP_IMAGES" --files-per-layer "$NOOP_FILES" --file-size "$NOOP_FILE_SIZE"
git_commit_tree "$NO"
noop_files=$(cd "$NO" && git ls-files | wc -l)
"$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build //... >/dev/null 2>&1
sleep 3   # the stat memo forgets files and blobs younger than 2 s
"$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build //... >/dev/null 2>&1
"$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build //... >/dev/null 2>&1
"$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build --message-format json //... >"$BENCH_DIR/noop-check.jsonl"
read -r noop_ran _ _ < <(build_events "$BENCH_DIR/noop-check.jsonl")
read -r no_imgc no_imgc_sd no_git no_git_sd < <(hyperfine_pair noop "$NO" \
  "$IMGC_BIN --cache-dir $NOC build //..." "git status -uno")
noop_check_t0=$(now)
"$IMGC_BIN" --cache-dir "$NOC" -C "$NO" check //... >/dev/null
noop_check=$(calc "$(now) - $noop_check_t0")

# ---------------------------------------------------------------- 3. cold builds
log "3/6 cold builds: $COLD_IMAGES images x $COLD_FILES files of $COLD_FILE_SIZE bytes"
CO="$BENCH_DIR/cold"
python3 "$GEN" --out "$CO" --images "$COLD_IMAGES" --files-per-layer "$COLD_FILES" --file-size "$COLD_FILE_SIZE"
cold_bytes=$(cd "$CO" && find bases services -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
cold_nfiles=$(cd "$CO" && find bases services -type f | wc -l)
grep -q '^workspace {$' "$CO/imgc.kdl" || die "unexpected imgc.kdl from gen.py (no 'workspace {' line)"
cp "$CO/imgc.kdl" "$BENCH_DIR/imgc.kdl.gzip"
sleep 3   # every file older than 2 s, as in a real tree

# Each contender: page cache warmed, dirty pages flushed, one run.
warm_tree "$CO"
timed t_pipe_gz bash -c "cd '$CO' && tar -cf - bases services | gzip -6 > '$BENCH_DIR/out.tar.gz'"
warm_tree "$CO"
timed t_pipe_zst bash -c "cd '$CO' && tar -cf - bases services | zstd -3 -T0 -q > '$BENCH_DIR/out.tar.zst'"
size_gz=$(stat -c %s "$BENCH_DIR/out.tar.gz")
size_zst=$(stat -c %s "$BENCH_DIR/out.tar.zst")
rm -f "$BENCH_DIR/out.tar.gz" "$BENCH_DIR/out.tar.zst"

# imgc, zstd: compression "zstd" in the workspace node, fresh cache, no output dir.
sed 's/^workspace {$/workspace {\n    compression "zstd"/' "$BENCH_DIR/imgc.kdl.gzip" >"$CO/imgc.kdl"
grep -q 'compression "zstd"' "$CO/imgc.kdl" || die "could not set compression zstd"
rm -rf "$CO/imgc-out"
warm_tree "$CO"
timed t_imgc_zst "$IMGC_BIN" --cache-dir "$BENCH_DIR/cache-cold-zstd" -C "$CO" build //... >/dev/null 2>"$BENCH_DIR/cold-zstd.log"
read -r size_imgc_zst nlayers_zst < <(layer_bytes "$CO/imgc-out")
rm -rf "$CO/imgc-out" "$BENCH_DIR/cache-cold-zstd"

# imgc, gzip (the default), with peak RSS; its cache serves steps 5 and 6.
cp "$BENCH_DIR/imgc.kdl.gzip" "$CO/imgc.kdl"
COC="$BENCH_DIR/cache-cold"
warm_tree "$CO"
timed t_imgc_gz maxrss_run "$BENCH_DIR/cold-gzip.maxrss" \
  "$IMGC_BIN" --cache-dir "$COC" -C "$CO" build //... >/dev/null 2>"$BENCH_DIR/cold-gzip.log"
read -r size_imgc_gz nlayers_gz < <(layer_bytes "$CO/imgc-out")

# ---------------------------------------------------------------- 4. peak memory
log "4/6 peak memory (of the cold gzip build)"
rss_kb=$(tail -n 1 "$BENCH_DIR/cold-gzip.maxrss")

# ---------------------------------------------------------------- 5. incremental
SVC=$(printf 'svc-%04d' $((COLD_IMAGES / 2)))
log "5/6 incremental: one file of //services/$SVC"
sleep 3   # outputs of the cold build older than 2 s
echo "# bench edit $(now)" >>"$CO/services/$SVC/data/d000/f00000.txt"
timed t_incr "$IMGC_BIN" --cache-dir "$COC" -C "$CO" build --message-format json //... >"$BENCH_DIR/incremental.jsonl"
read -r incr_ran incr_images incr_labels < <(build_events "$BENCH_DIR/incremental.jsonl")
incr_expected="//services/$SVC:data,//services/$SVC:$SVC"
if [ "$incr_ran" = 2 ] && [ "$incr_labels" = "$incr_expected" ]; then incr_check=PASS; else incr_check=MISS; fi

# ---------------------------------------------------------------- 6. base cascade
log "6/6 base cascade: one file of //bases:files"
sleep 3
echo "# bench edit $(now)" >>"$CO/bases/files/d000/f00000.txt"
timed t_casc "$IMGC_BIN" --cache-dir "$COC" -C "$CO" build --message-format json //... >"$BENCH_DIR/cascade.jsonl"
read -r casc_ran casc_images casc_labels < <(build_events "$BENCH_DIR/cascade.jsonl")
casc_svc_layers=$(tr , '\n' <<<"$casc_labels" | grep -c '^//services/.*:data$' || true)
casc_layer_labels=$(tr , '\n' <<<"$casc_labels" | grep -v -e ':base$' -e '^//services/svc-[0-9]*:svc-[0-9]*$' | paste -sd ' ' || true)
if [ "$casc_ran" = $((COLD_IMAGES + 2)) ] && [ "$casc_images" = $((COLD_IMAGES + 1)) ] &&
   [ "$casc_layer_labels" = "//bases:files" ] && [ "$casc_svc_layers" = 0 ]; then
  casc_check=PASS
else
  casc_check=MISS
fi

# ---------------------------------------------------------------- report
fe_ratio=$(calc "$fe_imgc / $fe_git")
no_ratio=$(calc "$no_imgc / $no_git")
mbs() { calc "'%.0f' % ($cold_bytes / 1e6 / $1)"; }
gz_speed=$(calc "$t_pipe_gz / $t_imgc_gz")
zst_speed=$(calc "$t_pipe_zst / $t_imgc_zst")
gz_size_ratio=$(calc "$size_imgc_gz / $size_gz")
zst_size_ratio=$(calc "$size_imgc_zst / $size_zst")
rss_mb=$(calc "$rss_kb / 1024")
incr_pct=$(calc "100 * $t_incr / $t_imgc_gz")
casc_pct=$(calc "100 * $t_casc / $t_imgc_gz")
if [ "$noop_ran" = 0 ]; then noop_ran_check=PASS; else noop_ran_check=MISS; fi

cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)

{
  echo "# imgc benchmark"
  echo
  echo "Scale \`$BENCH_SCALE\`, $(date -u +%Y-%m-%d). Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem RAM, Linux $(uname -r); imgc $IMGC_REV; $(hyperfine --version), $(git --version), gzip $(gzip --version | head -n1 | awk '{print $NF}'), zstd $(zstd --version | grep -o 'v[0-9.]*')."
  echo
  echo "| measurement | imgc | baseline | ratio | aim | result |"
  echo "|---|---|---|---|---|---|"
  echo "| front end: \`imgc check //...\`, $FRONTEND_PACKAGES packages ($fe_files files) vs \`git status -uno\` | $(ms "$fe_imgc") ± $(ms "$fe_imgc_sd") ms | $(ms "$fe_git") ± $(ms "$fe_git_sd") ms | $(f2 "$fe_ratio")x | ≤ 2x | $(pass "$fe_ratio <= 2") |"
  echo "| no-op build: \`imgc build //...\`, $NOOP_IMAGES images, $noop_files files vs \`git status -uno\` | $(ms "$no_imgc") ± $(ms "$no_imgc_sd") ms | $(ms "$no_git") ± $(ms "$no_git_sd") ms | $(f2 "$no_ratio")x | ≤ 2x | $(pass "$no_ratio <= 2") |"
  echo "| no-op build ran no action | $noop_ran actions | 0 | | 0 | $noop_ran_check |"
  echo "| cold build, gzip: $COLD_IMAGES images, $cold_nfiles files, $(mb "$cold_bytes") MB vs \`tar \| gzip -6\` | $(f2 "$t_imgc_gz") s, $(mbs "$t_imgc_gz") MB/s | $(f2 "$t_pipe_gz") s, $(mbs "$t_pipe_gz") MB/s | $(f2 "$gz_speed")x the speed | ≥ 2.5x | $(pass "$gz_speed >= 2.5") |"
  echo "| cold build, zstd vs \`tar \| zstd -3 -T0\` | $(f2 "$t_imgc_zst") s, $(mbs "$t_imgc_zst") MB/s | $(f2 "$t_pipe_zst") s, $(mbs "$t_pipe_zst") MB/s | $(f2 "$zst_speed")x the speed | ≥ 0.8x | $(pass "$zst_speed >= 0.8") |"
  echo "| output size, gzip: $nlayers_gz distinct layer blobs vs \`.tar.gz\` | $(mb "$size_imgc_gz") MB | $(mb "$size_gz") MB | $(calc "'%.3f' % $gz_size_ratio")x | ≤ 1.05x | $(pass "$gz_size_ratio <= 1.05") |"
  echo "| output size, zstd: $nlayers_zst distinct layer blobs vs \`.tar.zst\` | $(mb "$size_imgc_zst") MB | $(mb "$size_zst") MB | $(calc "'%.3f' % $zst_size_ratio")x | | |"
  echo "| peak memory (max RSS) of the cold gzip build | $(f1 "$rss_mb") MB | | | < 200 MB | $(pass "$rss_mb < 200") |"
  echo "| incremental: one file of one service changed, rebuild vs cold gzip build | $(f2 "$t_incr") s | $(f2 "$t_imgc_gz") s | $(f2 "$incr_pct") % | < 5 % | $(pass "$incr_pct < 5") |"
  echo "| incremental: actions run | $incr_ran: \`${incr_labels//,/\`, \`}\` | 2: the service's layer and image | | exactly 2 | $incr_check |"
  echo "| base cascade: one file of \`//bases:files\` changed, rebuild vs cold gzip build | $(f2 "$t_casc") s | $(f2 "$t_imgc_gz") s | $(f2 "$casc_pct") % | | |"
  echo "| base cascade: actions run | $casc_ran: $casc_images images, layers: \`${casc_layer_labels:--}\`, $casc_svc_layers service layers | $((COLD_IMAGES + 2)): \`//bases:files\`, base image + $COLD_IMAGES images, no service layer | | as expected | $casc_check |"
  echo
  echo "Front end and no-op: hyperfine mean ± σ of $RUNS runs after $WARMUP warm-ups; the no-op tree was built three times first (with a 3 s pause, as the stat memo skips files younger than 2 s). For comparison, \`imgc check //...\` on the no-op tree took $(ms "$noop_check") ms (one run). Cold builds and pipelines: one run each, page cache warmed by reading the tree first, fresh cache and no output directory for imgc; MB/s are input bytes (all files under \`bases/\` and \`services/\`) per wall-clock second. Sizes: distinct layer blobs (\`layers[].size\` of every manifest, each digest once) vs the compressed tarball."
  # Sections other scripts wrote (bench/remote.sh's "## Remote cache") are kept.
  if [ -f "$RESULTS" ] && grep -q '^## ' "$RESULTS"; then
    echo
    sed -n '/^## /,$p' "$RESULTS"
  fi
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
echo >&2
cat "$RESULTS"
