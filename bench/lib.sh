# Shared by the benchmark scripts (sourced, not run): installing the tools they
# need, the imgc binary they measure, their section of bench/results.md, and
# timing helpers.
# The sourcing script defines `log` and `die` first.

# need_tools TOOL...: installs the missing ones with apt-get when running as root
# (each TOOL is a command named like its Debian package; `time` means
# /usr/bin/time, `linux-perf` the command perf), else fails naming them. `time` alone missing is not fatal for a
# non-root user: the scripts measure peak RSS without it.
need_tools() {
  local t need=() missing=()
  for t in "$@"; do
    case "$t" in
      time) [ -x /usr/bin/time ] || need+=(time) ;;
      nginx) [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx) ;;
      linux-perf) command -v perf >/dev/null 2>&1 || need+=(linux-perf) ;;
      *) command -v "$t" >/dev/null 2>&1 || need+=("$t") ;;
    esac
  done
  [ ${#need[@]} -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -qq -y "${need[@]}" >/dev/null
    return 0
  fi
  for t in "${need[@]}"; do [ "$t" = time ] || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] ||
    die "missing tools: ${missing[*]} (install them, e.g. apt-get install ${missing[*]}, or run as root)"
}

# setup_imgc: copies the imgc to measure into $BENCH_DIR/bin (IMGC, else a fresh
# release build of $REPO), so a rebuild during the run changes nothing. Sets
# IMGC_BIN and IMGC_REV (the commit, marked when the build had local changes).
setup_imgc() {
  mkdir -p "$BENCH_DIR/bin"
  if [ -n "${IMGC:-}" ]; then
    [ -x "$IMGC" ] || die "IMGC=$IMGC is not an executable"
    cp "$IMGC" "$BENCH_DIR/bin/imgc"
  else
    command -v cargo >/dev/null 2>&1 || die "cargo not found (or set IMGC to an imgc binary)"
    log "cargo build --release"
    cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
    cp "$REPO/target/release/imgc" "$BENCH_DIR/bin/imgc"
  fi
  IMGC_BIN="$BENCH_DIR/bin/imgc"
  IMGC_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -z "${IMGC:-}" ] && ! git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null; then
    IMGC_REV="$IMGC_REV (+ uncommitted changes)"
  fi
}

# replace_section RESULTS TITLE FILE: puts FILE (a section starting with the line
# "## TITLE") in place of that section of RESULTS, or at its end, keeping the rest.
replace_section() {
  python3 - "$1" "## $2" "$3" <<'PY'
import os, sys
path, title, section = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().rstrip("\n") + "\n"
old = open(path).read() if os.path.exists(path) else "# imgc benchmark\n"
lines = old.splitlines(keepends=True)
start = next((i for i, l in enumerate(lines) if l.rstrip("\n") == title), None)
if start is None:
    new = old.rstrip("\n") + "\n\n" + section
else:
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "## "))), len(lines))
    rest = "".join(lines[end:])
    new = "".join(lines[:start]) + section + ("\n" + rest if rest else "")
open(path + ".tmp", "w").write(new)
os.replace(path + ".tmp", path)
PY
}

now() { date +%s.%N; }
# calc EXPR: float arithmetic (python3), e.g. calc "1/3" -> 0.333...
calc() { python3 -c "import sys; print($1)"; }

# Read every file of the tree once, so every contender sees a warm page cache.
warm_tree() { (cd "$1" && find bases services -type f -exec cat {} + >/dev/null); }

# timed OUTVAR CMD...: wall time of CMD in seconds into OUTVAR (dirty pages flushed before).
timed() {
  local __var=$1; shift
  sync
  local t0 t1
  t0=$(now); "$@"; t1=$(now)
  printf -v "$__var" '%s' "$(calc "$t1 - $t0")"
}

# bench NAME RUNS WARMUP PREPARE CMD: hyperfine, PREPARE before every run (also the
# warm-ups); prints "mean stddev" (s). Commands run without a shell: PREPARE is one
# script. hyperfine's report goes to $BENCH_DIR/NAME.hyperfine.json.
bench() {
  local name=$1 runs=$2 warmup=$3 prepare=$4 cmd=$5 json="$BENCH_DIR/$1.hyperfine.json"
  hyperfine -N --style basic --warmup "$warmup" --runs "$runs" --prepare "$prepare" \
    --export-json "$json" -n "$name" "$cmd" >&2
  python3 - "$json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(r["mean"], r["stddev"] or 0)
PY
}

# script NAME BODY: an executable script in $BENCH_DIR/bin (for hyperfine); prints its path.
script() {
  printf '#!/bin/sh\nset -e\n%s\n' "$2" >"$BENCH_DIR/bin/$1"
  chmod +x "$BENCH_DIR/bin/$1"
  echo "$BENCH_DIR/bin/$1"
}

# pass EXPR: PASS if the python3 expression EXPR is true, else MISS.
pass() { if python3 -c "import sys; sys.exit(0 if ($1) else 1)"; then echo PASS; else echo MISS; fi; }
# f2/f3 EXPR: EXPR with 2/3 decimals; mb BYTES: megabytes with 1 decimal.
f2() { calc "'%.2f' % ($1)"; }
f3() { calc "'%.3f' % ($1)"; }
mb() { calc "'%.1f' % ($1 / 1e6)"; }
