#!/usr/bin/env bash
# Measures what lease costs next to the floor for each job, side by side, and prints a markdown
# table of medians and ratios with the target for each. Exits non-zero if a target is missed.
#
# Needs: hyperfine and tini (Debian: apt-get install hyperfine tini), python3, cargo.
# It installs nothing itself. Timings on a shared machine are noisy: compare ratios, not times.
#   scripts/bench.sh            full run (a few minutes)
#   RUNS=50 scripts/bench.sh    fewer runs per command (the four start-up comparisons keep 600)
#   DEPTH=2000 scripts/bench.sh the depth of the nested chain that list reads (default 5000)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in hyperfine tini python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "bench.sh: missing ${missing[*]}: install them (e.g. apt-get install -y hyperfine tini python3)" >&2
    exit 2
fi
# shellcheck source=scripts/cargo-env.sh
. ./scripts/cargo-env.sh
lease_cargo_env

runs=${RUNS:-300}
fanout=${FANOUT:-200}
depth=${DEPTH:-5000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The binary as install.sh builds it.
lease=$(scripts/build-release.sh)
export LEASE_CONFIG=/dev/null HOME="$work/home"
mkdir -p "$HOME"

echo "preparing stores of 10, 1,000 and 10,000 leases in $work ..." >&2
# One token, present in every store, is the one verify checks.
token=$("$lease" --state-dir "$work/s10" issue --scope a:b --ttl 1h)
record=$(ls "$work/s10/leases/")
fill() { # fill DIR COUNT: COUNT leases in DIR, the shared token's record among them
    mkdir -p "$1/leases"
    chmod 700 "$1" "$1/leases"
    [ -e "$1/leases/$record" ] || cp -p "$work/s10/leases/$record" "$1/leases/"
    local have
    have=$(find "$1/leases" -name '*.toml' | wc -l)
    if [ "$have" -lt "$2" ]; then
        seq "$have" $(($2 - 1)) | LEASE_STATE_DIR=$1 xargs -P 4 -I{} "$lease" issue --scope x:y --ttl 1h >/dev/null
    fi
}
for size in 10 1000 10000; do
    fill "$work/s$size" "$size"
    test "$(find "$work/s$size/leases" -name '*.toml' | wc -l)" -eq "$size"
done
# write_leases DIR COUNT NESTED: COUNT detached leases written as record files, each the child
# of the one before if NESTED is 1 (one chain COUNT deep), all roots if it is 0.
write_leases() {
    python3 - "$@" <<'PY'
import os, sys, time
root, count, nested = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
leases = os.path.join(root, "leases")
os.makedirs(leases, mode=0o700)
stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
now = time.time()
for n in range(1, count + 1):
    lease_id = f"{n:012x}"
    text = (f'id = "{lease_id}"\ntoken_sha256 = "{lease_id}{"0" * 52}"\nscope = ["a:b"]\n'
            f'issued_at = "{stamp(now)}"\nexpires_at = "{stamp(now + 3600)}"\nstate = "active"\n')
    if nested and n > 1:
        text += f'parent = "{n - 1:012x}"\n'
    fd = os.open(os.path.join(leases, lease_id + ".toml"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
PY
}
echo "writing a chain of $depth nested leases and $depth root leases ..." >&2
write_leases "$work/chain" "$depth" 1
write_leases "$work/roots" "$depth" 0
echo abc >"$work/small.txt"
# Exported only now: with it in the environment, the fill's issues would be nested leases.
export LEASE_TOKEN=$token

results="$work/results.tsv"
: >"$results"
# compare NAME TARGET CMD_A CMD_B: hyperfine both, side by side; record the two medians. The
# runs are taken in ROUNDS rounds (6 unless the caller sets `rounds`), half with each command
# first, and the medians are of all of each command's runs: a drift of the machine during the
# measurement (another job, the page cache, the disk's journal) then weighs on both alike
# instead of on whichever ran second.
compare() {
    local name=$1 target=$2 a=$3 b=$4 round
    local rounds=${rounds:-6}
    local per_round=$(((runs + rounds - 1) / rounds))
    rm -f "$work"/h-*.json
    for round in $(seq "$rounds"); do
        if ((round % 2)); then set -- "$a" "$b"; else set -- "$b" "$a"; fi
        hyperfine -N --warmup 3 --runs "$per_round" --export-json "$work/h-$round.json" "$1" "$2" >/dev/null 2>&1
    done
    python3 - "$work" "$name" "$target" "$a" "$b" >>"$results" <<'PY'
import glob, json, statistics, sys
work, name, target, a, b = sys.argv[1:]
times = {a: [], b: []}
for path in glob.glob(f"{work}/h-*.json"):
    for result in json.load(open(path))["results"]:
        times[result["command"]] += result["times"]
ma, mb = statistics.median(times[a]), statistics.median(times[b])
print("\t".join([name, target, a, f"{ma * 1000:.3f} ms", b, f"{mb * 1000:.3f} ms", f"{ma / mb:.3f}"]))
PY
}
# rss NAME TARGET WRAPPER_A WRAPPER_B: median peak RSS (VmHWM) of each wrapper over 51 runs,
# read by its child from /proc/$PPID/status while the wrapper waits for it.
rss() {
    # shellcheck disable=SC2016 # $PPID is the child's to expand
    local name=$1 target=$2 a=$3 b=$4 probe='grep VmHWM /proc/$PPID/status'
    python3 - "$name" "$target" "$a" "$b" "$probe" >>"$results" <<'PY'
import shlex, statistics, subprocess, sys
name, target, a, b, probe = sys.argv[1:]
def peak(wrapper):
    samples = []
    for _ in range(51):
        out = subprocess.run(shlex.split(wrapper) + ["sh", "-c", probe],
                             capture_output=True, text=True, check=True).stdout
        samples.append(int(out.split()[1]))
    return statistics.median(samples)
pa, pb = peak(a), peak(b)
print("\t".join([name, target, a + " CMD", f"{pa:.0f} KiB", b + " CMD", f"{pb:.0f} KiB", f"{pa / pb:.3f}"]))
PY
}

export LEASE_STATE_DIR="$work/run"
# The start-up comparisons are a few milliseconds a run: at least 600 runs of each, in 20
# rounds, a few seconds in all. With 100 in six rounds, the machine's drift between rounds
# (tini's own median moved by 15% from one round to the next) decided the ratio's last digits.
quick=$((runs > 600 ? runs : 600))
runs=$quick rounds=20 compare "run vs tini" 1.2 "$lease run --scope a:b -- true" "tini -s -- true"
runs=$quick rounds=20 compare "verify vs cat of one file" 1.05 "$lease --state-dir $work/s10 verify a:b" "cat $work/small.txt"
compare "verify at 10,000 vs at 10 leases" 1.1 "$lease --state-dir $work/s10000 verify a:b" "$lease --state-dir $work/s10 verify a:b"
runs=$((runs / 10 > 10 ? runs / 10 : 10)) compare "list --json at 10,000 vs at 1,000" 12 \
    "$lease --state-dir $work/s10000 list --json" "$lease --state-dir $work/s1000 list --json"
runs=$((runs / 10 > 10 ? runs / 10 : 10)) compare "list --json of a $depth-deep chain vs $depth roots" 1.5 \
    "$lease --state-dir $work/chain list --json" "$lease --state-dir $work/roots list --json"
runs=$((runs / 20 > 10 ? runs / 20 : 10)) compare "$fanout concurrent runs vs tini (wall)" 1.5 \
    "scripts/bench-fanout.sh $fanout $lease run --scope a:b -- true" "scripts/bench-fanout.sh $fanout tini -s -- true"
rss "peak RSS of run vs tini" 2 "$lease run --scope a:b --" "tini -s --"

# The broker, on the 10-lease store: a socket for lease verify, a loopback port for wrk and nginx;
# its config has one upstream (an nginx started below) for the proxy's figures.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
upstream_port=$(free_port)
upstream_key="bench-key-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
(umask 077 && printf '%s\n' "$upstream_key" >"$work/upstream.key")
cat >"$work/broker.toml" <<TOML
[upstream.bench]
url = "http://127.0.0.1:$upstream_port"
secret_file = "$work/upstream.key"
[[upstream.bench.route]]
method = "GET"
path = "/files/**"
action = "a:b"
TOML
LEASE_CONFIG="$work/broker.toml" "$lease" --state-dir "$work/s10" serve \
    --listen "unix:$work/broker.sock" --listen 127.0.0.1:0 2>"$work/broker.log" &
broker=$!
trap 'kill "$broker" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 200); do grep -q "listening on 127" "$work/broker.log" && break; sleep 0.05; done
port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/broker.log")
runs=$quick rounds=20 compare "verify through the broker (unix socket) vs local" 1.5 \
    "$lease --broker unix:$work/broker.sock verify a:b" "$lease --state-dir $work/s10 verify a:b"
# A run through the broker: nested in the exported token's lease (a token holder's run).
runs=$quick rounds=20 compare "run through the broker (unix socket) vs tini" 1.6 \
    "$lease --broker unix:$work/broker.sock run --scope a:b -- true" "tini -s -- true"

# wrk: DURATION seconds of keep-alive load; prints "requests/s p50 p99" (latencies in ms).
load() {
    local url=$1 script=${2:-}
    wrk -t2 -c32 -d"${DURATION:-5}s" --latency ${script:+-s "$script"} "$url" 2>&1 | awk '
        /Requests\/sec/ { rps = $2 }
        $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 }
        END { print rps, p50, p99 }'
}
extra=()
if command -v wrk >/dev/null; then
    cat >"$work/verify.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"action":"a:b"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
    chmod 600 "$work/verify.lua"
    read -r rps p50 p99 <<<"$(load "http://127.0.0.1:$port/v1/verify" "$work/verify.lua")"
    extra+=("POST /v1/verify, keep-alive, wrk -t2 -c32: $rps decisions/s (target >= 20000), p50 $p50, p99 $p99")
    if command -v nginx >/dev/null; then
        mkdir -p "$work/nginx/tmp" "$work/site/open" "$work/site/guarded" "$work/site/ceiling"
        for dir in open guarded ceiling; do echo abc >"$work/site/$dir/small.txt"; done
        nginx_port=$(free_port)
        user=""
        [ "$(id -u)" = 0 ] && user="user root;"
        # auth_location PATH UPSTREAM: the subrequest's location, as docs/api.md has it.
        auth_location() {
            printf '    location = %s {\n      internal;\n      proxy_pass http://%s/v1/auth;\n' "$1" "$2"
            printf '      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n'
            printf '      proxy_pass_request_body off;\n      proxy_set_header Content-Length "";\n'
            printf '      proxy_set_header X-Lease-Action a:b;\n    }\n'
        }
        cat >"$work/nginx/nginx.conf" <<NGINX
$user
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp/b; proxy_temp_path $work/nginx/tmp/p;
  fastcgi_temp_path $work/nginx/tmp/f; uwsgi_temp_path $work/nginx/tmp/u; scgi_temp_path $work/nginx/tmp/s;
  # As docs/api.md recommends: the broker's unix socket, with kept-alive connections.
  upstream broker { server unix:$work/broker.sock; keepalive 32; }
  # The ceiling: an auth server that costs nothing, nginx answering the subrequest itself.
  upstream free { server unix:$work/nginx/free.sock; keepalive 32; }
  server { listen unix:$work/nginx/free.sock; location / { return 200; } }
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/site;
    location /guarded/ { auth_request /_lease; }
    location /ceiling/ { auth_request /_free; }
$(auth_location /_lease broker)
$(auth_location /_free free)
  }
}
NGINX
        nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
        cat >"$work/auth.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $token"
LUA
        read -r open_rps _ _ <<<"$(load "http://127.0.0.1:$nginx_port/open/small.txt" "$work/auth.lua")"
        read -r guarded_rps _ _ <<<"$(load "http://127.0.0.1:$nginx_port/guarded/small.txt" "$work/auth.lua")"
        read -r ceiling_rps _ _ <<<"$(load "http://127.0.0.1:$nginx_port/ceiling/small.txt" "$work/auth.lua")"
        nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" -s stop
        ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$1" "$2"; }
        extra+=("nginx serving a small file with auth_request through the broker: $guarded_rps requests/s against $open_rps without, $(ratio "$guarded_rps" "$open_rps") of it (target >= 0.5)")
        extra+=("  the ceiling, auth_request answered by nginx itself (return 200): $ceiling_rps requests/s, $(ratio "$ceiling_rps" "$open_rps") of nginx alone; the broker reaches $(ratio "$guarded_rps" "$ceiling_rps") of the ceiling")

        # The proxy (issue 12): the same nginx files reached directly with the key, and
        # through the broker's /u/bench/ with the lease token.
        nginx_proxy_port=$(free_port)
        mkdir -p "$work/up/tmp" "$work/up/site/files"
        echo abc >"$work/up/site/files/small.txt"
        head -c $((200 * 1024 * 1024)) /dev/urandom >"$work/up/site/files/big.bin"
        cat >"$work/up/nginx.conf" <<NGINX
$user
worker_processes 1;
pid $work/up/nginx.pid;
error_log $work/up/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $work/up/tmp/b; proxy_temp_path $work/up/tmp/p;
  fastcgi_temp_path $work/up/tmp/f; uwsgi_temp_path $work/up/tmp/u; scgi_temp_path $work/up/tmp/s;
  map \$http_authorization \$keyed { "Bearer $upstream_key" 1; default 0; }
  server {
    listen 127.0.0.1:$upstream_port;
    root $work/up/site;
    location / { if (\$keyed = 0) { return 401; } }
  }
  # The reference proxy: nginx itself in front of the same server, kept-alive, unbuffered.
  upstream self { server 127.0.0.1:$upstream_port; keepalive 32; }
  server {
    listen 127.0.0.1:$nginx_proxy_port;
    location / {
      proxy_pass http://self;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
        nginx -p "$work/up" -e "$work/up/error.log" -c "$work/up/nginx.conf"
        (umask 077
         echo "wrk.headers[\"Authorization\"] = \"Bearer $upstream_key\"" >"$work/direct.lua"
         printf 'Authorization: Bearer %s\n' "$upstream_key" >"$work/direct.headers"
         printf 'Authorization: Bearer %s\n' "$token" >"$work/proxy.headers")
        direct="http://127.0.0.1:$upstream_port/files"
        proxied="http://127.0.0.1:$port/u/bench/files"
        read -r direct_rps _ _ <<<"$(load "$direct/small.txt" "$work/direct.lua")"
        read -r proxied_rps _ _ <<<"$(load "$proxied/small.txt" "$work/auth.lua")"
        reference="http://127.0.0.1:$nginx_proxy_port/files"
        read -r reference_rps _ _ <<<"$(load "$reference/small.txt" "$work/direct.lua")"
        # Latency with one connection: what one request adds, not a queue's wait.
        one() { wrk -t1 -c1 -d"${DURATION:-5}s" --latency -s "$2" "$1" 2>&1 | awk '$1 == "50%" { print $2 }'; }
        ms() { python3 -c "import sys; v = sys.argv[1]; u = v.lstrip('0123456789.'); n = float(v[:len(v) - len(u)]); print(f\"{n * {'us': 0.001, 'ms': 1, 's': 1000}[u]:.3f}\")" "$1"; }
        direct_p50=$(ms "$(one "$direct/small.txt" "$work/direct.lua")")
        proxied_p50=$(ms "$(one "$proxied/small.txt" "$work/auth.lua")")
        added=$(python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.3f}')" "$proxied_p50" "$direct_p50")
        # Bandwidth: the best of three 200 MB downloads each way.
        speed() {
            for _ in 1 2 3; do curl -s -o /dev/null -w '%{speed_download}\n' -H "@$2" "$1"; done | sort -n | tail -1
        }
        direct_bw=$(speed "$direct/big.bin" "$work/direct.headers")
        proxied_bw=$(speed "$proxied/big.bin" "$work/proxy.headers")
        reference_bw=$(speed "$reference/big.bin" "$work/direct.headers")
        nginx -p "$work/up" -e "$work/up/error.log" -c "$work/up/nginx.conf" -s stop
        mib() { python3 -c "import sys; print(f'{float(sys.argv[1]) / 1048576:.0f}')" "$1"; }
        extra+=("small GETs through the proxy to nginx: $proxied_rps requests/s against $direct_rps direct, $(ratio "$proxied_rps" "$direct_rps") of it (target >= 0.6); p50 with one connection $proxied_p50 ms against $direct_p50 ms, $added ms added (target <= 0.3)")
        extra+=("  the reference, nginx as the proxy (kept-alive, unbuffered): $reference_rps requests/s, $(ratio "$reference_rps" "$direct_rps") of direct")
        extra+=("200 MB download through the proxy: $(mib "$proxied_bw") MiB/s against $(mib "$direct_bw") MiB/s direct, $(ratio "$proxied_bw" "$direct_bw") of it (target >= 0.8)")
        extra+=("  the reference, nginx as the proxy: $(mib "$reference_bw") MiB/s, $(ratio "$reference_bw" "$direct_bw") of direct")
    fi
fi

# Brokers on etcd (issue 13): the same token's record put on a one-member etcd, a broker on it
# beside the broker on the local store; then 1, 2 and 3 brokers on it under load at once.
if command -v etcd >/dev/null; then
    etcd_client=$(free_port)
    etcd_peer=$(free_port)
    etcd --name bench --data-dir "$work/etcd" --log-level error \
        --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "bench=http://127.0.0.1:$etcd_peer" >"$work/etcd.log" 2>&1 &
    etcd_pid=$!
    trap 'kill "$broker" "$etcd_pid" 2>/dev/null; rm -rf "$work"' EXIT
    for _ in $(seq 300); do
        curl -s --max-time 1 "http://127.0.0.1:$etcd_client/health" | grep -q '"health":"true"' && break
        sleep 0.1
    done
    store="etcd://127.0.0.1:$etcd_client/bench"
    # The record of the exported token, as the local store has it, put under the bench prefix.
    python3 - "$work/s10/leases/$record" "$work/put.json" <<'PY'
import base64, json, os, sys
path, out = sys.argv[1], sys.argv[2]
key = "bench/leases/" + os.path.basename(path)[: -len(".toml")]
value = open(path, "rb").read()
b64 = lambda b: base64.b64encode(b).decode()
json.dump({"key": b64(key.encode()), "value": b64(value)}, open(out, "w"))
PY
    curl -s --max-time 5 -X POST --data-binary "@$work/put.json" "http://127.0.0.1:$etcd_client/v3/kv/put" >/dev/null
    etcd_brokers=()
    # start_on_etcd N: broker N on the store, on unix:$work/etcd-N.sock and a loopback port.
    start_on_etcd() {
        mkdir -p "$work/etcd-state-$1"
        LEASE_CONFIG=/dev/null "$lease" --state-dir "$work/etcd-state-$1" serve --store "$store" \
            --listen "unix:$work/etcd-$1.sock" --listen 127.0.0.1:0 2>"$work/etcd-broker-$1.log" &
        etcd_brokers+=($!)
        for _ in $(seq 200); do grep -q "listening on 127" "$work/etcd-broker-$1.log" && break; sleep 0.05; done
    }
    start_on_etcd 1
    trap 'kill "$broker" "$etcd_pid" "${etcd_brokers[@]}" 2>/dev/null; rm -rf "$work"' EXIT
    compare "verify through a broker on etcd vs a broker on the local store" 2 \
        "$lease --broker unix:$work/etcd-1.sock verify a:b" "$lease --broker unix:$work/broker.sock verify a:b"
    compare "mint+revoke of a run through a broker on etcd vs on the local store" 3 \
        "$lease --broker unix:$work/etcd-1.sock run --scope a:b -- true" "$lease --broker unix:$work/broker.sock run --scope a:b -- true"
    runs=$((runs / 20 > 10 ? runs / 20 : 10)) compare "$fanout concurrent runs through a broker on etcd vs on the local store (wall)" 3 \
        "scripts/bench-fanout.sh $fanout $lease --broker unix:$work/etcd-1.sock run --scope a:b -- true" \
        "scripts/bench-fanout.sh $fanout $lease --broker unix:$work/broker.sock run --scope a:b -- true"
    if command -v wrk >/dev/null; then
        # decisions N: POST /v1/verify on brokers 1..N at once (one wrk each, -t1 -c16), summed.
        decisions() {
            local n=$1 i p total=0 loads=()
            for i in $(seq "$n"); do
                p=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/etcd-broker-$i.log")
                wrk -t1 -c16 -d"${DURATION:-5}s" -s "$work/verify.lua" "http://127.0.0.1:$p/v1/verify" >"$work/wrk-$i.txt" 2>&1 &
                loads+=($!)
            done
            wait "${loads[@]}" || true
            for i in $(seq "$n"); do
                total=$(awk -v t="$total" '/Requests\/sec/ { t += $2 } END { print t }' "$work/wrk-$i.txt")
            done
            echo "$total"
        }
        one=$(decisions 1)
        start_on_etcd 2
        two=$(decisions 2)
        start_on_etcd 3
        three=$(decisions 3)
        local_rps=$(wrk -t1 -c16 -d"${DURATION:-5}s" -s "$work/verify.lua" "http://127.0.0.1:$port/v1/verify" 2>&1 | awk '/Requests\/sec/ { print $2 }')
        extra+=("POST /v1/verify on etcd (one member), all brokers loaded at once (wrk -t1 -c16 each): 1 broker $one decisions/s, 2 brokers $two, 3 brokers $three; one broker on the local store, the same load: $local_rps")
    fi
    kill "${etcd_brokers[@]}" 2>/dev/null
    wait "${etcd_brokers[@]}" 2>/dev/null || true
    kill "$etcd_pid"
    wait "$etcd_pid" 2>/dev/null || true
fi

kill "$broker"
wait "$broker" || true

echo "| what | lease | median | reference | median | ratio | target | |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
missed=0
while IFS=$'\t' read -r name target a ma b mb ratio; do
    verdict=pass
    if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$ratio" "$target"; then :; else
        verdict=MISS
        missed=1
    fi
    a=${a//$lease/lease} b=${b//$lease/lease}
    echo "| $name | \`${a//$work/\$W}\` | $ma | \`${b//$work/\$W}\` | $mb | ${ratio}x | <= ${target}x | $verdict |"
done <"$results"
for line in "${extra[@]}"; do
    echo
    echo "$line"
done
echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(uname -sr); $(hyperfine --version); $("$lease" --version); $(date -u +%Y-%m-%d)"
exit "$missed"
