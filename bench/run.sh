#!/usr/bin/env bash
# imgc benchmark: imgc against git and tar|pigz / tar|gzip / tar|zstd on the same
# generated trees, in one run. Prints a Markdown table and writes it to bench/results.md.
#
#   bench/run.sh                       # full size (1 GB and 5 GB cold builds; ~8 GB free in BENCH_DIR)
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
#   BENCH_FRONTEND_PACKAGES, BENCH_NOOP_IMAGES (a series: "300 1000 3000" at full),
#   BENCH_NOOP_FILES, BENCH_NOOP_FILE_SIZE, BENCH_COLD_IMAGES, BENCH_COLD_FILES,
#   BENCH_COLD_FILE_SIZE, BENCH_BIG_IMAGES (the peak-memory tree, 5x the cold one),
#   BENCH_RUNS, BENCH_WARMUP
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
GEN="$HERE/gen.py"
BENCH_DIR=${BENCH_DIR:-/tmp/imgc-bench}
BENCH_SCALE=${BENCH_SCALE:-full}
RESULTS=${BENCH_RESULTS:-$HERE/results.md}

case "$BENCH_SCALE" in
  full)  d_pk=1000 d_ni="300 1000 3000" d_nf=10 d_ns=1024 d_ci=100 d_cf=10 d_cs=1048576 d_bi=500 ;;
  small) d_pk=100  d_ni="30 100 300"    d_nf=10 d_ns=1024 d_ci=10  d_cf=10 d_cs=1048576 d_bi=50 ;;
  *) echo "run.sh: BENCH_SCALE must be full or small, not '$BENCH_SCALE'" >&2; exit 2 ;;
esac
FRONTEND_PACKAGES=${BENCH_FRONTEND_PACKAGES:-$d_pk}
# The no-op series, ascending and without duplicates. Its middle size (1000 at full) is
# the reference size of the no-op aim, of the profile and of the `imgc check` comparison.
read -r -a NOOP_SERIES <<<"$(tr ', ' '\n\n' <<<"${BENCH_NOOP_IMAGES:-$d_ni}" | grep . | sort -n -u | paste -sd ' ' -)"
[ ${#NOOP_SERIES[@]} -gt 0 ] || { echo "run.sh: BENCH_NOOP_IMAGES is empty" >&2; exit 2; }
for n in "${NOOP_SERIES[@]}"; do
  case "$n" in ''|*[!0-9]*|0) echo "run.sh: BENCH_NOOP_IMAGES must be positive numbers, not '$n'" >&2; exit 2 ;; esac
done
NOOP_REF=${NOOP_SERIES[$(( ${#NOOP_SERIES[@]} / 2 ))]}
NOOP_MIN=${NOOP_SERIES[0]}
NOOP_MAX=${NOOP_SERIES[$(( ${#NOOP_SERIES[@]} - 1 ))]}
NOOP_FILES=${BENCH_NOOP_FILES:-$d_nf}
NOOP_FILE_SIZE=${BENCH_NOOP_FILE_SIZE:-$d_ns}
COLD_IMAGES=${BENCH_COLD_IMAGES:-$d_ci}
COLD_FILES=${BENCH_COLD_FILES:-$d_cf}
COLD_FILE_SIZE=${BENCH_COLD_FILE_SIZE:-$d_cs}
BIG_IMAGES=${BENCH_BIG_IMAGES:-$d_bi}
RUNS=${BENCH_RUNS:-10}
WARMUP=${BENCH_WARMUP:-2}

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

# ---------------------------------------------------------------- tools
need_tools hyperfine zstd pigz git python3 tar gzip time strace linux-perf
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
log "1/8 front end: $FRONTEND_PACKAGES packages"
FE="$BENCH_DIR/frontend"
python3 "$GEN" --out "$FE" --frontend-only --packages "$FRONTEND_PACKAGES"
git_commit_tree "$FE"
"$IMGC_BIN" --cache-dir "$BENCH_DIR/cache-frontend" -C "$FE" check //... >/dev/null
# As for the no-op trees: a check of files younger than 2 s leaves a snapshot that
# the racy-file rule does not trust; once they are older, the next check writes one.
sleep 3
"$IMGC_BIN" --cache-dir "$BENCH_DIR/cache-frontend" -C "$FE" check //... >/dev/null
read -r fe_imgc fe_imgc_sd fe_git fe_git_sd < <(hyperfine_pair frontend "$FE" \
  "$IMGC_BIN --cache-dir $BENCH_DIR/cache-frontend check //..." "git status -uno")
fe_files=$(cd "$FE" && git ls-files | wc -l)

# ---------------------------------------------------------------- 2. no-op builds
# One tree per size of the series, each committed to git and built three times first.
no_imgc=() no_imgc_sd=() no_git=() no_git_sd=() noop_files=() noop_ran=()
for n in "${NOOP_SERIES[@]}"; do
  log "2/8 no-op build: $n images x $NOOP_FILES files of $NOOP_FILE_SIZE bytes"
  NO="$BENCH_DIR/noop-$n"
  NOC="$BENCH_DIR/cache-noop-$n"
  python3 "$GEN" --out "$NO" --images "$n" --files-per-layer "$NOOP_FILES" --file-size "$NOOP_FILE_SIZE"
  git_commit_tree "$NO"
  noop_files[n]=$(cd "$NO" && git ls-files | wc -l)
  "$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build //... >/dev/null 2>&1
  sleep 3   # the stat memo forgets files and blobs younger than 2 s
  "$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build //... >/dev/null 2>&1
  "$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build //... >/dev/null 2>&1
  "$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build --message-format json //... >"$BENCH_DIR/noop-$n-check.jsonl"
  read -r ran _ _ < <(build_events "$BENCH_DIR/noop-$n-check.jsonl")
  noop_ran[n]=$ran
  read -r a a_sd b b_sd < <(hyperfine_pair "noop-$n" "$NO" \
    "$IMGC_BIN --cache-dir $NOC build //..." "git status -uno")
  no_imgc[n]=$a no_imgc_sd[n]=$a_sd no_git[n]=$b no_git_sd[n]=$b_sd
done
NO="$BENCH_DIR/noop-$NOOP_REF"
NOC="$BENCH_DIR/cache-noop-$NOOP_REF"
noop_check_t0=$(now)
"$IMGC_BIN" --cache-dir "$NOC" -C "$NO" check //... >/dev/null
noop_check=$(calc "$(now) - $noop_check_t0")

# ---------------------------------------------------------------- 3. profile
log "3/8 profile: one no-op build of $NOOP_REF images (strace -c, perf stat)"
strace -c -f -o "$BENCH_DIR/profile-imgc.strace" \
  "$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build //... >/dev/null 2>&1
(cd "$NO" && strace -c -f -o "$BENCH_DIR/profile-git.strace" git status -uno >/dev/null)
# strace_table IMGC GIT: the Markdown rows of the syscalls imgc made most often (at
# most 15) with git's count of each, then the totals.
strace_table() {
  python3 - "$1" "$2" <<'PY'
import sys
def counts(path):
    c = {}
    for line in open(path):
        f = line.split()
        # "% time seconds usecs/call calls [errors] syscall"; skip headers and rules
        if len(f) in (5, 6) and f[3].isdigit():
            c[f[-1]] = int(f[3])
    return c
imgc, git = counts(sys.argv[1]), counts(sys.argv[2])
top = sorted((k for k in imgc if k != "total"), key=lambda k: (-imgc[k], k))[:15]
for k in top:
    print("| `%s` | %s | %s |" % (k, f"{imgc[k]:,}", f"{git[k]:,}" if k in git else "0"))
print("| **total** (%d distinct syscalls; git %d) | **%s** | **%s** |" % (
    len(imgc) - 1, len(git) - 1, f"{imgc.get('total', 0):,}", f"{git.get('total', 0):,}"))
PY
}
# perf stat -e instructions, where the machine supports it (not in many VMs).
perf_instr() { perf stat -x, -e instructions -o "$1" "${@:2}" && awk -F, '/^[0-9]/ {print $1; exit}' "$1"; }
perf_imgc="" perf_git=""
if probe=$(perf_instr "$BENCH_DIR/perf-probe.csv" true 2>/dev/null) && [ -n "$probe" ]; then
  perf_imgc=$(perf_instr "$BENCH_DIR/profile-imgc.perf" "$IMGC_BIN" --cache-dir "$NOC" -C "$NO" build //... 2>/dev/null)
  perf_git=$(cd "$NO" && perf_instr "$BENCH_DIR/profile-git.perf" git status -uno 2>/dev/null)
fi

# ---------------------------------------------------------------- 4. first progress on a terminal
# The full path with everything cached on the largest no-op tree, on a pseudo-terminal
# (bench/pty_first.py): time from the exec to the first byte imgc writes, and the
# silences after it. Before each run one BUILD.kdl is touched (same text: every parse
# and action stays cached), so the snapshot is refused after its stat walk and the
# full path runs. After the profile above, which must still see a no-op tree.
FP="$BENCH_DIR/noop-$NOOP_MAX"
FPC="$BENCH_DIR/cache-noop-$NOOP_MAX"
FP_PKG=$(printf 'services/svc-%04d' $((NOOP_MAX / 2)))
log "4/8 first progress on a terminal: the full path on $NOOP_MAX images"
{ read -r fp_first fp_gap fp_still _ fp_runs; IFS= read -r fp_still_text; } < <(
  python3 "$HERE/pty_first.py" --runs 5 --log "$BENCH_DIR/first-progress.log" \
    --prepare "touch '$FP/$FP_PKG/BUILD.kdl'" -- "$IMGC_BIN" --cache-dir "$FPC" -C "$FP" build //...)
# The same on the fast path: the touched file out of the racy window, a snapshot
# written by a full build, then answered from it.
sleep 3
"$IMGC_BIN" --cache-dir "$FPC" -C "$FP" build //... >/dev/null 2>&1
"$IMGC_BIN" --cache-dir "$FPC" -C "$FP" build --message-format json //... >"$BENCH_DIR/first-progress-fast.jsonl"
grep -q '"snapshot":true' "$BENCH_DIR/first-progress-fast.jsonl" ||
  die "no snapshot answered the build of $FP after the first-progress runs"
{ read -r ff_first _ ff_still _ ff_runs; read -r _; } < <(
  python3 "$HERE/pty_first.py" --runs 5 --log "$BENCH_DIR/first-progress-fast.log" \
    -- "$IMGC_BIN" --cache-dir "$FPC" -C "$FP" build //...)

# ---------------------------------------------------------------- 5. cold builds
log "5/8 cold builds: $COLD_IMAGES images x $COLD_FILES files of $COLD_FILE_SIZE bytes"
CO="$BENCH_DIR/cold"
python3 "$GEN" --out "$CO" --images "$COLD_IMAGES" --files-per-layer "$COLD_FILES" --file-size "$COLD_FILE_SIZE"
tree_bytes() { (cd "$1" && find bases services -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'); }
cold_bytes=$(tree_bytes "$CO")
cold_nfiles=$(cd "$CO" && find bases services -type f | wc -l)
grep -q '^workspace {$' "$CO/imgc.kdl" || die "unexpected imgc.kdl from gen.py (no 'workspace {' line)"
cp "$CO/imgc.kdl" "$BENCH_DIR/imgc.kdl.gzip"
sleep 3   # every file older than 2 s, as in a real tree

# Each contender: page cache warmed, dirty pages flushed, one run.
warm_tree "$CO"
timed t_pipe_pigz bash -c "cd '$CO' && tar -cf - bases services | pigz -6 > '$BENCH_DIR/out.tar.pigz.gz'"
warm_tree "$CO"
timed t_pipe_gz bash -c "cd '$CO' && tar -cf - bases services | gzip -6 > '$BENCH_DIR/out.tar.gz'"
warm_tree "$CO"
timed t_pipe_zst bash -c "cd '$CO' && tar -cf - bases services | zstd -3 -T0 -q > '$BENCH_DIR/out.tar.zst'"
size_pigz=$(stat -c %s "$BENCH_DIR/out.tar.pigz.gz")
size_gz=$(stat -c %s "$BENCH_DIR/out.tar.gz")
size_zst=$(stat -c %s "$BENCH_DIR/out.tar.zst")
rm -f "$BENCH_DIR/out.tar.pigz.gz" "$BENCH_DIR/out.tar.gz" "$BENCH_DIR/out.tar.zst"

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
rss_kb=$(tail -n 1 "$BENCH_DIR/cold-gzip.maxrss")

# ---------------------------------------------------------------- 6. incremental
SVC=$(printf 'svc-%04d' $((COLD_IMAGES / 2)))
log "6/8 incremental: one file of //services/$SVC"
sleep 3   # outputs of the cold build older than 2 s
echo "# bench edit $(now)" >>"$CO/services/$SVC/data/d000/f00000.txt"
timed t_incr "$IMGC_BIN" --cache-dir "$COC" -C "$CO" build --message-format json //... >"$BENCH_DIR/incremental.jsonl"
read -r incr_ran incr_images incr_labels < <(build_events "$BENCH_DIR/incremental.jsonl")
incr_expected="//services/$SVC:data,//services/$SVC:$SVC"
if [ "$incr_ran" = 2 ] && [ "$incr_labels" = "$incr_expected" ]; then incr_check=PASS; else incr_check=MISS; fi

# ---------------------------------------------------------------- 7. base cascade
log "7/8 base cascade: one file of //bases:files"
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

# ---------------------------------------------------------------- 8. peak memory, 5x the input
# The cold tree and its cache make room for a tree of BIG_IMAGES images of the same shape.
log "8/8 peak memory: a cold gzip build of $BIG_IMAGES images x $COLD_FILES files of $COLD_FILE_SIZE bytes"
rm -rf "$CO" "$COC"
BIG="$BENCH_DIR/big"
python3 "$GEN" --out "$BIG" --images "$BIG_IMAGES" --files-per-layer "$COLD_FILES" --file-size "$COLD_FILE_SIZE"
big_bytes=$(tree_bytes "$BIG")
sleep 3
warm_tree "$BIG"
timed t_big maxrss_run "$BENCH_DIR/big-gzip.maxrss" \
  "$IMGC_BIN" --cache-dir "$BENCH_DIR/cache-big" -C "$BIG" build //... >/dev/null 2>"$BENCH_DIR/big-gzip.log"
big_rss_kb=$(tail -n 1 "$BENCH_DIR/big-gzip.maxrss")
rm -rf "$BIG" "$BENCH_DIR/cache-big"

# ---------------------------------------------------------------- report
fe_ratio=$(calc "$fe_imgc / $fe_git")
no_ratio=()
noop_ran_total=0
for n in "${NOOP_SERIES[@]}"; do
  no_ratio[n]=$(calc "${no_imgc[n]} / ${no_git[n]}")
  noop_ran_total=$((noop_ran_total + noop_ran[n]))
done
# Flat: the ratio at the largest size at most 1.25x the ratio at the smallest.
no_growth=$(calc "${no_ratio[NOOP_MAX]} / ${no_ratio[NOOP_MIN]}")
mbs() { calc "'%.0f' % ($cold_bytes / 1e6 / $1)"; }
pigz_speed=$(calc "$t_pipe_pigz / $t_imgc_gz")
gz_speed=$(calc "$t_pipe_gz / $t_imgc_gz")
zst_speed=$(calc "$t_pipe_zst / $t_imgc_zst")
pigz_size_ratio=$(calc "$size_imgc_gz / $size_pigz")
gz_size_ratio=$(calc "$size_imgc_gz / $size_gz")
zst_size_ratio=$(calc "$size_imgc_zst / $size_zst")
rss_mb=$(calc "$rss_kb / 1024")
big_rss_mb=$(calc "$big_rss_kb / 1024")
rss_growth=$(calc "$big_rss_kb / $rss_kb")
incr_pct=$(calc "100 * $t_incr / $t_imgc_gz")
casc_pct=$(calc "100 * $t_casc / $t_imgc_gz")
if [ "$noop_ran_total" = 0 ]; then noop_ran_check=PASS; else noop_ran_check=MISS; fi
n3() { calc "f'{$1:,}'"; }

cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)

{
  echo "# imgc benchmark"
  echo
  echo "Scale \`$BENCH_SCALE\`, $(date -u +%Y-%m-%d). Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem RAM, Linux $(uname -r); imgc $IMGC_REV; $(hyperfine --version), $(git --version), gzip $(gzip --version | head -n1 | awk '{print $NF}'), $(pigz --version 2>&1 | head -n1), zstd $(zstd --version | grep -o 'v[0-9.]*'), strace $(strace -V | head -n1 | awk '{print $NF}')."
  echo
  echo "| measurement | imgc | baseline | ratio | aim | result |"
  echo "|---|---|---|---|---|---|"
  echo "| front end: \`imgc check //...\`, $FRONTEND_PACKAGES packages ($fe_files files) vs \`git status -uno\` | $(ms "$fe_imgc") ± $(ms "$fe_imgc_sd") ms | $(ms "$fe_git") ± $(ms "$fe_git_sd") ms | $(f2 "$fe_ratio")x | ≤ 1.5x | $(pass "$fe_ratio <= 1.5") |"
  for n in "${NOOP_SERIES[@]}"; do
    aim="" res=""
    if [ "$n" = "$NOOP_REF" ]; then aim="≤ 1.5x" res=$(pass "${no_ratio[n]} <= 1.5"); fi
    echo "| no-op build: \`imgc build //...\`, $(n3 "$n") images, $(n3 "${noop_files[n]}") files vs \`git status -uno\` | $(ms "${no_imgc[n]}") ± $(ms "${no_imgc_sd[n]}") ms | $(ms "${no_git[n]}") ± $(ms "${no_git_sd[n]}") ms | $(f2 "${no_ratio[n]}")x | $aim | $res |"
  done
  if [ "$NOOP_MAX" != "$NOOP_MIN" ]; then
    echo "| no-op build, flat as the tree grows: ratio at $(n3 "$NOOP_MAX") images / ratio at $(n3 "$NOOP_MIN") | | | $(f2 "$no_growth")x | ≤ 1.25x | $(pass "$no_growth <= 1.25") |"
  fi
  echo "| no-op builds ran no action (every size) | $noop_ran_total actions | 0 | | 0 | $noop_ran_check |"
  echo "| first progress on a terminal: \`imgc build //...\` on a pty, full path (snapshot refused: one BUILD.kdl touched, all cached), $(n3 "$NOOP_MAX") images: exec to the first byte, median of $fp_runs | $(f1 "$fp_first") ms | | | ≤ 100 ms | $(pass "$fp_first <= 100") |"
  echo "| first progress on a terminal, the no-op fast path (answered from the snapshot), $(n3 "$NOOP_MAX") images: exec to the first byte, median of $ff_runs; the text stood still for at most | $(f1 "$ff_first") ms; $(f1 "$ff_still") ms | | | ≤ 100 ms | $(pass "$ff_first <= 100") |"
  echo "| first progress: the full-path builds' longest silence (no byte written), and longest stretch without new text (spinner and clock aside) | $(f1 "$fp_gap") ms; $(f1 "$fp_still") ms (\"${fp_still_text//|/\\|}\") | | | | |"
  echo "| cold build, gzip: $COLD_IMAGES images, $cold_nfiles files, $(mb "$cold_bytes") MB vs \`tar \| pigz -6\` | $(f2 "$t_imgc_gz") s, $(mbs "$t_imgc_gz") MB/s | $(f2 "$t_pipe_pigz") s, $(mbs "$t_pipe_pigz") MB/s | $(f2 "$pigz_speed")x the speed | ≥ 2.3x | $(pass "$pigz_speed >= 2.3") |"
  echo "| cold build, gzip vs \`tar \| gzip -6\` | $(f2 "$t_imgc_gz") s | $(f2 "$t_pipe_gz") s, $(mbs "$t_pipe_gz") MB/s | $(f2 "$gz_speed")x the speed | | |"
  echo "| cold build, zstd vs \`tar \| zstd -3 -T0\` | $(f2 "$t_imgc_zst") s, $(mbs "$t_imgc_zst") MB/s | $(f2 "$t_pipe_zst") s, $(mbs "$t_pipe_zst") MB/s | $(f2 "$zst_speed")x the speed | ≥ 1.0x | $(pass "$zst_speed >= 1.0") |"
  echo "| output size, gzip: $nlayers_gz distinct layer blobs vs pigz's \`.tar.gz\` | $(mb "$size_imgc_gz") MB | $(mb "$size_pigz") MB | $(calc "'%.3f' % $pigz_size_ratio")x | ≤ 1.0x | $(pass "$pigz_size_ratio <= 1.0") |"
  echo "| output size, gzip, vs gzip -6's \`.tar.gz\` | $(mb "$size_imgc_gz") MB | $(mb "$size_gz") MB | $(calc "'%.3f' % $gz_size_ratio")x | | |"
  echo "| output size, zstd: $nlayers_zst distinct layer blobs vs \`.tar.zst\` | $(mb "$size_imgc_zst") MB | $(mb "$size_zst") MB | $(calc "'%.3f' % $zst_size_ratio")x | | |"
  echo "| peak memory (max RSS) of the cold gzip build, $(mb "$cold_bytes") MB | $(f1 "$rss_mb") MB | | | < 100 MB | $(pass "$rss_mb < 100") |"
  echo "| peak memory of a cold gzip build of $BIG_IMAGES images, $(mb "$big_bytes") MB ($(f2 "$(calc "$big_bytes / $cold_bytes")")x the input), vs the cold build's | $(f1 "$big_rss_mb") MB ($(f2 "$t_big") s, $(calc "'%.0f' % ($big_bytes / 1e6 / $t_big)") MB/s) | $(f1 "$rss_mb") MB | $(f2 "$rss_growth")x | < 100 MB, ≤ 1.25x (flat) | $(pass "$big_rss_mb < 100 and $rss_growth <= 1.25") |"
  echo "| incremental: one file of one service changed, rebuild vs cold gzip build | $(f2 "$t_incr") s | $(f2 "$t_imgc_gz") s | $(f2 "$incr_pct") % | ≤ 3 % | $(pass "$incr_pct <= 3") |"
  echo "| incremental: actions run | $incr_ran: \`${incr_labels//,/\`, \`}\` | 2: the service's layer and image | | exactly 2 | $incr_check |"
  echo "| base cascade: one file of \`//bases:files\` changed, rebuild vs cold gzip build | $(f2 "$t_casc") s | $(f2 "$t_imgc_gz") s | $(f2 "$casc_pct") % | | |"
  echo "| base cascade: actions run | $casc_ran: $casc_images images, layers: \`${casc_layer_labels:--}\`, $casc_svc_layers service layers | $((COLD_IMAGES + 2)): \`//bases:files\`, base image + $COLD_IMAGES images, no service layer | | as expected | $casc_check |"
  echo
  echo "Front end and no-op: hyperfine mean ± σ of $RUNS runs after $WARMUP warm-ups; each no-op tree was built three times first (with a 3 s pause, as the stat memo skips files younger than 2 s). The no-op aim applies at $(n3 "$NOOP_REF") images; \"flat\" means the imgc/git ratio at the largest size is at most 1.25x the ratio at the smallest. For comparison, \`imgc check //...\` on the $(n3 "$NOOP_REF")-image no-op tree took $(ms "$noop_check") ms (one run). Cold builds and pipelines: one run each, page cache warmed by reading the tree first, fresh cache and no output directory for imgc; MB/s are input bytes (all files under \`bases/\` and \`services/\`) per wall-clock second. Sizes: distinct layer blobs (\`layers[].size\` of every manifest, each digest once) vs the compressed tarball. Peak memory: max RSS (GNU time or getrusage); \"flat\" means the larger tree's at most 1.25x the cold tree's."
  echo
  echo "### No-op build profile ($(n3 "$NOOP_REF") images)"
  echo
  echo "\`strace -c -f\` of one no-op \`imgc build //...\` and of one \`git status -uno\` on the $(n3 "$NOOP_REF")-image tree: the syscalls imgc made most often, with git's count of each."
  echo
  echo "| syscall | imgc calls | git calls |"
  echo "|---|---|---|"
  strace_table "$BENCH_DIR/profile-imgc.strace" "$BENCH_DIR/profile-git.strace"
  echo
  if [ -n "$perf_imgc" ] && [ -n "$perf_git" ]; then
    echo "\`perf stat -e instructions\`: imgc $(n3 "$perf_imgc"), git $(n3 "$perf_git") instructions ($(f2 "$(calc "$perf_imgc / $perf_git")")x)."
  else
    echo "\`perf stat -e instructions\`: not supported on this machine (no hardware counters), so no instruction counts."
  fi
  # Sections other scripts wrote (bench/remote.sh's "## Remote cache") are kept.
  if [ -f "$RESULTS" ] && grep -q '^## ' "$RESULTS"; then
    echo
    sed -n '/^## /,$p' "$RESULTS"
  fi
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
echo >&2
cat "$RESULTS"
