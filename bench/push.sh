#!/usr/bin/env bash
# imgc push benchmark: the cascade tree's images (N services on one base) pushed by
# `imgc push` and, side by side in the same run, by `skopeo copy` of the same OCI
# layouts, to Debian's docker-registry on loopback: a cold push to an empty
# registry, a re-push with everything already there, and a push after a base
# cascade (one file of the base changed, everything rebuilt). Bytes and requests
# come from the registry's access log and storage; each tool's pushed tags are
# checked against the layouts' manifest digests. Prints a Markdown table and writes
# it as the "Push" section of bench/results.md (other sections are kept).
#
#   bench/push.sh                       # full size: 100 services
#   BENCH_SCALE=small bench/push.sh     # quick smoke run: 10 services
#   IMGC=target/debug/imgc BENCH_SCALE=small bench/push.sh   # without a release build
#
# Environment:
#   BENCH_DIR      work directory (default /tmp/imgc-bench-push); emptied at start, but
#                  only if it is empty or was made by a previous run of this script
#   BENCH_SCALE    full (default) or small
#   BENCH_RESULTS  the results file (default bench/results.md)
#   IMGC           an imgc binary to measure (default: cargo build --release, then a
#                  copy of target/release/imgc, so a rebuild during the run changes nothing)
#   PUSH_JOBS      images skopeo copies at once and imgc's -j (default: the number of CPUs)
#   Sizes and runs, each overriding the scale's default:
#   BENCH_SERVICES, BENCH_SERVICE_FILES, BENCH_SERVICE_FILE_SIZE, BENCH_BASE_FILES,
#   BENCH_BASE_FILE_SIZE, BENCH_RUNS, BENCH_WARMUP
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
GEN="$HERE/gen.py"
BENCH_DIR=${BENCH_DIR:-/tmp/imgc-bench-push}
BENCH_SCALE=${BENCH_SCALE:-full}
RESULTS=${BENCH_RESULTS:-$HERE/results.md}

case "$BENCH_SCALE" in
  full)  d_n=100 d_runs=5 ;;
  small) d_n=10  d_runs=2 ;;
  *) echo "push.sh: BENCH_SCALE must be full or small, not '$BENCH_SCALE'" >&2; exit 2 ;;
esac
SERVICES=${BENCH_SERVICES:-$d_n}
SERVICE_FILES=${BENCH_SERVICE_FILES:-3}
SERVICE_FILE_SIZE=${BENCH_SERVICE_FILE_SIZE:-65536}
BASE_FILES=${BENCH_BASE_FILES:-20}
BASE_FILE_SIZE=${BENCH_BASE_FILE_SIZE:-262144}
RUNS=${BENCH_RUNS:-$d_runs}
WARMUP=${BENCH_WARMUP:-1}
JOBS=${PUSH_JOBS:-$(nproc)}

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'push.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ "$SERVICES" -ge 1 ] || die "BENCH_SERVICES must be at least 1"
[ "$JOBS" -ge 1 ] || die "PUSH_JOBS must be at least 1"

# ---------------------------------------------------------------- tools
need_tools docker-registry skopeo hyperfine python3

# ---------------------------------------------------------------- work dir
MARKER=.imgc-bench-push-dir
if [ -e "$BENCH_DIR" ]; then
  [ -d "$BENCH_DIR" ] || die "BENCH_DIR $BENCH_DIR is not a directory"
  if [ -n "$(ls -A "$BENCH_DIR")" ] && [ ! -e "$BENCH_DIR/$MARKER" ]; then
    die "BENCH_DIR $BENCH_DIR is not empty and was not made by push.sh; refusing to clean it"
  fi
fi
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
case "$BENCH_DIR" in *[[:space:]\"\\]*) die "BENCH_DIR $BENCH_DIR holds whitespace, a quote or a backslash (hyperfine splits commands on whitespace; the registry's YAML config quotes it)" ;; esac
REG="$BENCH_DIR/registries"
REGISTRY_PY="$BENCH_DIR/bin/registry.py"

# stop_registries: stops every registry this script started (by its PID file; the
# helper checks the PID is still a docker-registry first).
stop_registries() {
  local d
  [ -x "$REGISTRY_PY" ] || return 0
  for d in "$REG"/*/; do
    [ -e "$d/pid" ] && python3 "$REGISTRY_PY" stop "$(basename "$d")" 2>/dev/null || true
  done
}
# A previous run killed hard may have left its registries running: stop them before cleaning.
if [ -e "$BENCH_DIR/$MARKER" ]; then
  stop_registries
  chmod -R u+w "$BENCH_DIR" 2>/dev/null || true   # blobs and their directories may be read-only
  find "$BENCH_DIR" -mindepth 1 -delete
fi
touch "$BENCH_DIR/$MARKER"
mkdir -p "$BENCH_DIR/bin" "$REG"
set -E
exec 9>&2   # the trap's message goes to the script's stderr, also from a command whose stderr is a log
trap 'echo "push.sh: failed at line $LINENO; logs and trees are in $BENCH_DIR" >&9' ERR
trap stop_registries EXIT

# ---------------------------------------------------------------- imgc
setup_imgc
imgc_help=$("$IMGC_BIN" push --help 2>&1 || true)
[[ $imgc_help == *--registry* ]] || die "$IMGC_BIN has no \`push --registry\`: this imgc predates registry push"
unset IMGC_CACHE_DIR IMGC_REMOTE_CACHE IMGC_REMOTE_CACHE_MODE IMGC_REMOTE_CACHE_CREDENTIALS SOURCE_DATE_EPOCH \
  IMGC_REGISTRY_HOST IMGC_REGISTRY_USERNAME IMGC_REGISTRY_PASSWORD REGISTRY_AUTH_FILE \
  http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY
# The registries need no credentials: an empty Docker config, so none is looked up.
export DOCKER_CONFIG="$BENCH_DIR/docker-config" NO_PROXY=127.0.0.1 no_proxy=127.0.0.1
mkdir -p "$DOCKER_CONFIG"
skopeo_version=$(skopeo --version | awk '{print $1, $3}')
registry_version=$(docker-registry --version | awk '{print $1, $3}')

# ---------------------------------------------------------------- registries
# registry.py start|stop|barrier NAME: one docker-registry per NAME, with its config,
# storage (data/), access log (access.log, the server's stdout) and PID under
# $REG/NAME. `start` stops NAME's previous server, empties its storage and starts a
# new one on a free loopback port never used before in this run (written to
# NAME/port): neither imgc's nor skopeo's memory of which repositories hold which
# blobs (keyed by registry host and port) can apply to it. `barrier` sends one
# request and waits for its access log line, so every request a finished client saw
# answered is in the log.
cat >"$REGISTRY_PY" <<EOF
#!/usr/bin/env python3
import os, shutil, signal, socket, subprocess, sys, time, urllib.error, urllib.request
REG = "$REG"
EOF
cat >>"$REGISTRY_PY" <<'EOF'
CONFIG = """version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: "{data}"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: imgc-bench-secret
"""

def is_registry(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"docker-registry" in f.read()
    except OSError:
        return False

def stop(d):
    pidfile = os.path.join(d, "pid")
    if not os.path.exists(pidfile):
        return
    pid = int(open(pidfile).read())
    if is_registry(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 10
        while is_registry(pid) and time.time() < deadline:
            time.sleep(0.02)
        if is_registry(pid):
            os.kill(pid, signal.SIGKILL)
    os.remove(pidfile)

def get(url):
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code

def free_port():
    used_file = os.path.join(REG, "used-ports")
    used = set(open(used_file).read().split()) if os.path.exists(used_file) else set()
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if str(port) not in used:
            with open(used_file, "a") as f:
                f.write("%d\n" % port)
            return port
    sys.exit("registry.py: no unused free port")

def start(d):
    stop(d)
    os.makedirs(d, exist_ok=True)
    data = os.path.join(d, "data")
    shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    with open(os.path.join(d, "config.yml"), "w") as f:
        f.write(CONFIG.format(data=data, port=port))
    out = open(os.path.join(d, "access.log"), "w")
    err = open(os.path.join(d, "registry.log"), "w")
    p = subprocess.Popen(["docker-registry", "serve", os.path.join(d, "config.yml")],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    with open(os.path.join(d, "pid"), "w") as f:
        f.write(str(p.pid))
    deadline = time.time() + 20
    while True:
        if p.poll() is not None:
            sys.exit("registry.py: docker-registry exited with %s (see %s/registry.log)" % (p.returncode, d))
        try:
            if get("http://127.0.0.1:%d/v2/" % port) == 200:
                break
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit("registry.py: docker-registry did not answer on 127.0.0.1:%d within 20 s" % port)
        time.sleep(0.05)
    with open(os.path.join(d, "port"), "w") as f:
        f.write(str(port))

def barrier(d):
    port = open(os.path.join(d, "port")).read().strip()
    path = "/v2/imgc-bench-barrier/%d/tags/list" % time.time_ns()
    get("http://127.0.0.1:%s%s" % (port, path))
    deadline = time.time() + 10
    while ('"GET %s ' % path) not in open(os.path.join(d, "access.log")).read():
        if time.time() > deadline:
            sys.exit("registry.py: the barrier request is not in %s/access.log" % d)
        time.sleep(0.02)

cmd, name = sys.argv[1], sys.argv[2]
{"start": start, "stop": stop, "barrier": barrier}[cmd](os.path.join(REG, name))
EOF
chmod +x "$REGISTRY_PY"
registry() { python3 "$REGISTRY_PY" "$@"; }
port_of() { cat "$REG/$1/port"; }

# ---------------------------------------------------------------- helpers

mean_sd() { echo "$(f3 "$1") ± $(f3 "$2") s"; }

# ---------------------------------------------------------------- 1. tree and build
log "1/5 tree and build: a base of $BASE_FILES files of $BASE_FILE_SIZE bytes, $SERVICES services of $SERVICE_FILES files of $SERVICE_FILE_SIZE bytes"
WS="$BENCH_DIR/ws"
OUT="$WS/imgc-out"
python3 "$GEN" --out "$WS" --images "$SERVICES" --files-per-layer "$SERVICE_FILES" \
  --file-size "$SERVICE_FILE_SIZE" --base-files "$BASE_FILES" --base-file-size "$BASE_FILE_SIZE"
sleep 3   # every file older than 2 s, as in a real tree
CHANGED="bases/files/d000/f00000.txt"
[ -f "$WS/$CHANGED" ] || die "the generated tree has no $CHANGED"
LC="$BENCH_DIR/imgc-cache"
imgc() { "$IMGC_BIN" --cache-dir "$LC" -C "$WS" "$@"; }
# A change of the base, different every time (a real change), and the build after it.
CHANGE=$(script change-base "date +'# changed at %s.%N' >>'$WS/$CHANGED'
'$IMGC_BIN' --cache-dir '$LC' -C '$WS' build //... >/dev/null 2>&1")
# The OCI layouts the build writes, as paths under imgc-out (also the repositories'
# names under each tool's namespace): the base first, then the services.
LAYOUTS=$(echo bases/base; for i in $(seq 0 $((SERVICES - 1))); do printf 'services/svc-%04d/svc-%04d\n' "$i" "$i"; done)
echo "$LAYOUTS" >"$BENCH_DIR/layouts"

# check_build JSONL EXPECT: the events of a --message-format json build (or of a push
# with --output json, whose build comes first) show that it ran `all` (3 actions per
# service, 2 for the base), `none`, or `cascade` (exactly the base layer and every
# image). Prints a summary.
check_build() {
  python3 - "$SERVICES" "$@" <<'EOF'
import json, sys
services, path, expect = int(sys.argv[1]), sys.argv[2], sys.argv[3]
events = [json.loads(l) for l in open(path) if l.strip()]
failed = [e for e in events if e["event"] in ("failed", "skipped")]
if failed:
    sys.exit("%s: %s %s: %s" % (path, failed[0]["event"], failed[0]["label"], failed[0].get("error", failed[0].get("reason"))))
ran = sorted(e["label"] for e in events if e["event"] == "finished" and not e["cached"])
images = sorted(["//bases:base"] + ["//services/svc-%04d:svc-%04d" % (i, i) for i in range(services)])
if expect == "all":
    assert len(ran) == 3 * services + 2, (path, len(ran))
elif expect == "none":
    cached = [e for e in events if e["event"] == "finished" and e["cached"]]
    assert not ran and len(cached) == 3 * services + 2, (path, "ran", ran, "cached", len(cached))
elif expect == "cascade":
    assert ran == sorted(["//bases:files"] + images), (path, "ran", ran)
else:
    sys.exit("unknown expectation " + expect)
print("%d actions" % len(ran))
EOF
}

imgc build --message-format json //... >"$BENCH_DIR/build-cold.jsonl" 2>"$BENCH_DIR/build-cold.log"
check_build "$BENCH_DIR/build-cold.jsonl" all >/dev/null
# The stat memo remembers only files (and blobs) older than 2 s: build again after a pause,
# so the build each push starts with is a no-op that stats the tree.
sleep 3
imgc build //... >/dev/null 2>&1
imgc build --message-format json //... >"$BENCH_DIR/build-noop.jsonl" 2>"$BENCH_DIR/build-noop.log"
check_build "$BENCH_DIR/build-noop.jsonl" none >/dev/null

# ---------------------------------------------------------------- push commands
# Each reads its registry's port from a file (a cold run's registry is new every run).
# imgc: one process pushing every image, -j $JOBS. skopeo: the base first, then the
# services, $JOBS copies at once (xargs -P), each to the repository imgc uses under
# its own namespace; skopeo's blob info cache lets it mount the base's layer from the
# base's repository, as imgc does.
# push_cmd TOOL REGISTRY [EXTRA IMGC FLAGS]: the script pushing everything with TOOL.
push_cmd() {
  local tool=$1 name=$2 extra=${3:-}
  case "$tool" in
    imgc) script "push-imgc-$name$extra" "port=\$(cat '$REG/$name/port')
exec '$IMGC_BIN' --cache-dir '$LC' -C '$WS' push -j $JOBS $extra --registry \"127.0.0.1:\$port/imgc\" //..." ;;
    skopeo) script "push-skopeo-$name" "port=\$(cat '$REG/$name/port')
cd '$OUT'
skopeo copy -q --dest-tls-verify=false oci:bases/base \"docker://127.0.0.1:\$port/skopeo/bases/base:latest\"
tail -n +2 '$BENCH_DIR/layouts' | xargs -P $JOBS -I{} skopeo copy -q --dest-tls-verify=false oci:{} \"docker://127.0.0.1:\$port/skopeo/{}:latest\"" ;;
  esac
}
PUSH_IMGC=$(push_cmd imgc imgc)
PUSH_IMGC_JSON=$(push_cmd imgc imgc "--output=json")
PUSH_SKOPEO=$(push_cmd skopeo skopeo)
PUSH_IMGC_T=$(push_cmd imgc timing)
PUSH_SKOPEO_T=$(push_cmd skopeo timing)
FRESH_TIMING=$(script fresh-timing-registry "python3 '$REGISTRY_PY' start timing")

# blobs_of NAME OUT: the digests of every blob the registry NAME stores.
blobs_of() {
  (cd "$REG/$1/data/docker/registry/v2/blobs/sha256" 2>/dev/null && ls -d ./*/* | sed 's,^\./../,sha256:,') >"$2" || : >"$2"
}

# analyze NAME TOOL LOGSTART [BLOBS_BEFORE] [IMGC_JSONL]: what a push did to registry
# NAME, from its access log after byte offset LOGSTART: requests, blobs uploaded (a
# PUT or POST completing an upload with `digest=`) and their bytes, blobs mounted,
# manifests put and their bytes, per repository. Checks that every image's tag in
# TOOL's namespace now names the manifest digest of its layout, that no request that
# writes failed, and (for imgc) that the `pushed` events of IMGC_JSONL report the same
# bytes per image. With BLOBS_BEFORE (the registry's blobs before the push), also the
# layers that were new to the registry and the layer bytes sent beyond one upload of
# each new layer (re-sent). Prints one JSON object.
analyze() {
  python3 - "$REG/$1" "$2" "$3" "$OUT" "$BENCH_DIR/layouts" "${4:-}" "${5:-}" <<'EOF'
import json, os, re, sys, urllib.parse
d, tool, start, out, layouts_file, before_file, imgc_json = sys.argv[1:8]
store = os.path.join(d, "data/docker/registry/v2")
layouts = open(layouts_file).read().split()
size, kind, manifest_of = {}, {}, {}
for lay in layouts:
    index = json.load(open(os.path.join(out, lay, "index.json")))
    [m] = index["manifests"]
    manifest_of[lay] = (m["digest"], m["size"])
    man = json.load(open(os.path.join(out, lay, "blobs", *m["digest"].split(":"))))
    size[man["config"]["digest"]] = man["config"]["size"]
    kind[man["config"]["digest"]] = "config"
    for l in man["layers"]:
        size[l["digest"]] = l["size"]
        kind[l["digest"]] = "layer"
    # Every tag points at the layout's manifest: both tools pushed the same images.
    link = os.path.join(store, "repositories", tool, lay, "_manifests/tags/latest/current/link")
    if not os.path.exists(link):
        sys.exit("%s: %s/%s:latest was not pushed" % (d, tool, lay))
    got = open(link).read().strip()
    if got != m["digest"]:
        sys.exit("%s: %s/%s:latest is %s, the layout's manifest is %s" % (d, tool, lay, got, m["digest"]))
line = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) ')
with open(os.path.join(d, "access.log"), "rb") as f:
    f.seek(int(start))
    text = f.read().decode()
requests = uploads = mounts = manifests = 0
sent = {"layer": 0, "config": 0, "manifest": 0}
per_repo, layer_uploads = {}, []
for l in text.splitlines():
    m = line.match(l)
    if not m:
        continue
    method, uri, status = m.group(1), m.group(2), int(m.group(3))
    path, _, query = uri.partition("?")
    if path == "/v2/" or path.startswith("/v2/imgc-bench-barrier/"):
        continue   # readiness probes and barriers
    requests += 1
    if method in ("PUT", "POST", "PATCH", "DELETE") and status >= 400:
        sys.exit("%s: a push request failed: %s" % (d, l))
    q = urllib.parse.parse_qs(query)
    repo = re.sub(r"^/v2/(.*)/(blobs|manifests)/.*$", r"\1", path)
    if "/blobs/uploads/" in path and method in ("PUT", "POST") and "digest" in q and status == 201:
        dg = q["digest"][0]
        if dg not in size:
            sys.exit("%s: uploaded blob %s is in no layout" % (d, dg))
        uploads += 1
        sent[kind[dg]] += size[dg]
        per_repo[repo] = per_repo.get(repo, 0) + size[dg]
        if kind[dg] == "layer":
            layer_uploads.append(dg)
    elif "/blobs/uploads/" in path and method == "POST" and "mount" in q and status == 201:
        mounts += 1
    elif "/manifests/" in path and method == "PUT" and status == 201:
        lay = repo[len(tool) + 1:]
        manifests += 1
        sent["manifest"] += manifest_of[lay][1]
        per_repo[repo] = per_repo.get(repo, 0) + manifest_of[lay][1]
r = {"requests": requests, "uploads": uploads, "layer_uploads": len(layer_uploads),
     "mounts": mounts, "manifests": manifests, "layer_bytes": sent["layer"],
     "config_bytes": sent["config"], "manifest_bytes": sent["manifest"],
     "bytes": sum(sent.values())}
# Bytes per image: the base, and the least and most of a service.
base = per_repo.get(tool + "/bases/base", 0)
svc = [per_repo.get(tool + "/" + lay, 0) for lay in layouts[1:]]
r.update(base_bytes=base, svc_min=min(svc), svc_max=max(svc))
if before_file:
    before = set(open(before_file).read().split())
    new = sorted({dg for dg, k in kind.items() if k == "layer"} - before)
    r["new_layers"] = len(new)
    r["new_layer_bytes"] = sum(size[dg] for dg in new)
    r["resent_layer_bytes"] = sent["layer"] - sum(size[dg] for dg in set(layer_uploads) & set(new))
    r["new_layers_uploaded"] = all(dg in layer_uploads for dg in new)
if imgc_json:
    events = [json.loads(l) for l in open(imgc_json) if l.strip()]
    pushed = {e["reference"].split("/", 1)[1].rsplit(":", 1)[0]: e["bytes_uploaded"] for e in events if e["event"] == "pushed"}
    [summary] = [e for e in events if e["event"] == "push-summary"]
    if summary["failed"] or summary["pushed"] != len(layouts):
        sys.exit("%s: imgc pushed %d images, %d failed" % (imgc_json, summary["pushed"], summary["failed"]))
    logged = {repo: per_repo.get(repo, 0) for repo in pushed}
    if pushed != logged or summary["bytes_uploaded"] != r["bytes"]:
        sys.exit("%s: imgc reports %d bytes uploaded, the registry's log %d (per image: %s vs %s)"
                 % (imgc_json, summary["bytes_uploaded"], r["bytes"], pushed, logged))
print(json.dumps(r))
EOF
}

# checked_push TOOL NAME TAG [BLOBS_BEFORE]: one push of everything with TOOL to registry
# NAME, timed, then analysed (into $BENCH_DIR/TAG.json, also printed). imgc's run
# has --output json; its build must have run nothing.
checked_push() {
  local tool=$1 name=$2 tag=$3 before=${4:-} start t jsonl=""
  registry barrier "$name"
  start=$(stat -c %s "$REG/$name/access.log")
  if [ "$tool" = imgc ]; then
    jsonl="$BENCH_DIR/$tag.jsonl"
    timed t "$PUSH_IMGC_JSON" >"$jsonl" 2>"$BENCH_DIR/$tag.log"
    check_build "$jsonl" none >/dev/null
  else
    timed t "$PUSH_SKOPEO" >"$BENCH_DIR/$tag.log" 2>&1
  fi
  registry barrier "$name"
  analyze "$name" "$tool" "$start" "$before" "$jsonl" | python3 -c "
import json, sys
r = json.load(sys.stdin); r['seconds'] = $t
print(json.dumps(r))" | tee "$BENCH_DIR/$tag.json"
}
# get TAG FIELD: a field of an analysis.
get() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$BENCH_DIR/$1.json" "$2"; }

# ---------------------------------------------------------------- 2. cold push
log "2/5 cold push to an empty registry"
registry start imgc
registry start skopeo
checked_push imgc imgc imgc-cold >/dev/null
checked_push skopeo skopeo skopeo-cold >/dev/null
# Timed: a new, empty registry (new storage, new port) before every run.
read -r t_i_cold t_i_cold_sd < <(bench imgc-cold "$RUNS" "$WARMUP" "$FRESH_TIMING" "$PUSH_IMGC_T")
registry barrier timing
analyze timing imgc 0 >"$BENCH_DIR/imgc-cold-last.json"
read -r t_s_cold t_s_cold_sd < <(bench skopeo-cold "$RUNS" "$WARMUP" "$FRESH_TIMING" "$PUSH_SKOPEO_T")
registry barrier timing
analyze timing skopeo 0 >"$BENCH_DIR/skopeo-cold-last.json"
registry stop timing

# ---------------------------------------------------------------- 3. re-push
log "3/5 re-push: everything already there"
checked_push imgc imgc imgc-repush >/dev/null
checked_push skopeo skopeo skopeo-repush >/dev/null
NOTHING=$(script nothing ":")
read -r t_i_re t_i_re_sd < <(bench imgc-repush "$RUNS" "$WARMUP" "$NOTHING" "$PUSH_IMGC")
read -r t_s_re t_s_re_sd < <(bench skopeo-repush "$RUNS" "$WARMUP" "$NOTHING" "$PUSH_SKOPEO")

# ---------------------------------------------------------------- 4. cascade
log "4/5 push after a base cascade"
date +'# changed at %s.%N' >>"$WS/$CHANGED"
imgc build --message-format json //... >"$BENCH_DIR/build-cascade.jsonl" 2>"$BENCH_DIR/build-cascade.log"
check_build "$BENCH_DIR/build-cascade.jsonl" cascade >/dev/null
blobs_of imgc "$BENCH_DIR/imgc-before-cascade.blobs"
blobs_of skopeo "$BENCH_DIR/skopeo-before-cascade.blobs"
checked_push imgc imgc imgc-cascade "$BENCH_DIR/imgc-before-cascade.blobs" >/dev/null
checked_push skopeo skopeo skopeo-cascade "$BENCH_DIR/skopeo-before-cascade.blobs" >/dev/null
for t in imgc skopeo; do
  [ "$(get $t-cascade new_layers)" = 1 ] ||
    die "the cascade made $(get $t-cascade new_layers) layers new to $t's registry, not 1 (the base's)"
  [ "$(get $t-cascade new_layers_uploaded)" = True ] || die "$t did not upload the base's new layer"
done
# Timed: before every run a new change of the base file and the build after it, so
# every run pushes a real cascade.
read -r t_i_casc t_i_casc_sd < <(bench imgc-cascade "$RUNS" "$WARMUP" "$CHANGE" "$PUSH_IMGC")
read -r t_s_casc t_s_casc_sd < <(bench skopeo-cascade "$RUNS" "$WARMUP" "$CHANGE" "$PUSH_SKOPEO")
registry stop imgc
registry stop skopeo

# ---------------------------------------------------------------- 5. report
log "5/5 report"
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
images=$((SERVICES + 1))
tree_bytes=$(cd "$WS" && find bases services -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
cold_ratio=$(calc "$t_i_cold / $t_s_cold")
re_ratio=$(calc "$t_i_re / $t_s_re")
casc_ratio=$(calc "$t_i_casc / $t_s_casc")
# what TAG: a summary of an analysed push.
what() {
  python3 - "$BENCH_DIR/$1.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
mb = lambda b: "%.2f MB" % (b / 1e6) if b >= 1e5 else "{:,} B".format(b)
n = lambda k, what: "%d %s%s" % (r[k], what, "" if r[k] == 1 else "s")
print("%s sent (layers %s, configs %s, manifests %s); %s (%s), %s, %s put, %s"
      % (mb(r["bytes"]), mb(r["layer_bytes"]), mb(r["config_bytes"]), mb(r["manifest_bytes"]),
         n("uploads", "blob upload"), n("layer_uploads", "layer"), n("mounts", "mount"),
         n("manifests", "manifest"), n("requests", "request")))
EOF
}
per_image() {
  python3 - "$BENCH_DIR/$1.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
mb = lambda b: "%.2f MB" % (b / 1e6) if b >= 1e5 else "{:,} B".format(b)
print("per image: base %s, each service %s to %s" % (mb(r["base_bytes"]), mb(r["svc_min"]), mb(r["svc_max"])))
EOF
}
i_re_up=$(get imgc-repush uploads)
i_re_man=$(get imgc-repush manifests)
i_resent=$(get imgc-cascade resent_layer_bytes)
s_resent=$(get skopeo-cascade resent_layer_bytes)
new_layer=$(get imgc-cascade new_layer_bytes)
# Every timed cold run moved the same images as the checked one (the last run's log).
for t in imgc skopeo; do
  [ "$(get $t-cold-last bytes)" = "$(get $t-cold bytes)" ] ||
    die "$t's last timed cold push sent $(get $t-cold-last bytes) bytes, its checked one $(get $t-cold bytes)"
done

{
  echo "## Push"
  echo
  echo "Scale \`$BENCH_SCALE\`, $(date -u +%Y-%m-%d). Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem RAM, Linux $(uname -r); imgc $IMGC_REV; $skopeo_version; $registry_version; $(hyperfine --version). Tree: a base of $BASE_FILES files of $BASE_FILE_SIZE bytes and $SERVICES services of $SERVICE_FILES files of $SERVICE_FILE_SIZE bytes each, $(mb "$tree_bytes") MB, $images images."
  echo
  echo "| measurement | imgc | skopeo | imgc / skopeo | aim | result |"
  echo "|---|---|---|---|---|---|"
  echo "| cold push: every image to an empty registry | $(mean_sd "$t_i_cold" "$t_i_cold_sd"); $(what imgc-cold) | $(mean_sd "$t_s_cold" "$t_s_cold_sd"); $(what skopeo-cold) | $(f2 "$cold_ratio")x | ≤ 1x | $(pass "$cold_ratio <= 1") |"
  echo "| re-push: everything already there | $(mean_sd "$t_i_re" "$t_i_re_sd"); $(what imgc-repush) | $(mean_sd "$t_s_re" "$t_s_re_sd"); $(what skopeo-repush) | $(f2 "$re_ratio")x | ≤ 1x; imgc: 0 blob uploads, 0 manifests put | $(pass "$re_ratio <= 1 and $i_re_up == 0 and $i_re_man == 0") |"
  echo "| push after a base cascade: one line appended to one base file, everything rebuilt, then pushed | $(mean_sd "$t_i_casc" "$t_i_casc_sd"); $(what imgc-cascade); $(per_image imgc-cascade) | $(mean_sd "$t_s_casc" "$t_s_casc_sd"); $(what skopeo-cascade); $(per_image skopeo-cascade) | $(f2 "$casc_ratio")x | ≤ 1x | $(pass "$casc_ratio <= 1") |"
  echo "| layer bytes re-sent after the cascade: layer bytes uploaded beyond one upload of the base's one new layer ($new_layer B) | $i_resent B | $s_resent B | | imgc 0 | $(pass "$i_resent == 0") |"
  echo
  echo "Both tools push the same OCI layouts (imgc's build of the tree, \`imgc-out/\`) to Debian's docker-registry on 127.0.0.1 (filesystem storage, no auth, access log on), each under its own namespace in its own registry: imgc with \`imgc push -j $JOBS --registry 127.0.0.1:PORT/imgc //...\` (one process; it starts with a no-op build), skopeo with \`skopeo copy --dest-tls-verify=false oci:LAYOUT docker://127.0.0.1:PORT/skopeo/LAYOUT:latest\`, the base first, then the services $JOBS at a time (\`xargs -P\`). Times: hyperfine mean ± σ of $RUNS runs after $WARMUP warm-up. Cold: before every run (\`--prepare\`) a new registry with empty storage on a new port (so neither imgc's record of which repository holds which blob nor skopeo's blob info cache applies). Re-push: the registry each tool filled. Cascade: before every run a new line appended to \`$CHANGED\` and \`imgc build //...\`. Bytes and requests: one more push of each kind, from the registry's access log (each completed blob upload counted at its layout size, each manifest \`PUT\` at its manifest's size; mounts send nothing), cross-checked with \`imgc push --output json\`'s \`bytes_uploaded\` per image; after each of those pushes, and after the last timed cold run of each tool, every tag is checked to name its layout's manifest digest. Re-sent: after the cascade exactly one layer (the base's) is new to each registry; every other layer byte uploaded is a re-send."
} >"$BENCH_DIR/section.md"

replace_section "$RESULTS" "Push" "$BENCH_DIR/section.md"
echo >&2
cat "$BENCH_DIR/section.md"
