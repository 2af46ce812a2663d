#!/usr/bin/env bash
# udplogger benchmark: CPU, loss, memory and syscalls per datagram against
# a null receiver (the ceiling) and the peers, on loopback.  Run it with
# `make bench`; needs root for 10000 sockets and SO_RCVBUFFORCE, and
# Debian's rsyslog, socat and linux-perf for the peers and syscall counts
# (missing ones are skipped and say so).
#
# Environment: BENCH_REPS (3), BENCH_COUNT (200000 paced datagrams),
# BENCH_RATE (45000/s), BENCH_BURST (1000000), BENCH_ONLY (scenario names,
# space separated: all when unset), BENCH_RECEIVERS (receivers to run: all
# available when unset), BENCH_BASELINE (another udplogger binary, such as
# the previous commit's, measured in the same runs as "baseline"), BENCH_RESULTS
# (a file to keep the raw results in: scenario receiver ns lost hwm syscalls
# lines-per-write, one line per run).
set -u
cd "$(dirname "$0")/../.."
top=$PWD
bin=$top/test/bench
reps=${BENCH_REPS:-3}
count=${BENCH_COUNT:-200000}
rate=${BENCH_RATE:-45000}
burst=${BENCH_BURST:-1000000}
work=$(mktemp -d /tmp/udplogger-bench.XXXXXX)
results=$work/results
: >"$results"
port=$((30000 + $$ % 20000))
# 16 networks for allow=, loopback last.
allow16="allow=10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,192.0.2.0/24,198.51.100.0/24"
allow16="$allow16,203.0.113.0/24,169.254.0.0/16,2001:db8::/32,fd00::/8,fe80::/10,2001:db8:1::/48"
allow16="$allow16,2001:db8:2::/48,2001:db8:3::/48,::1,127.0.0.0/8"

have() { command -v "$1" >/dev/null 2>&1; }
receivers="null udplogger plain"
have rsyslogd && receivers="$receivers rsyslog" || echo "bench: rsyslogd not installed (apt-get install rsyslog): skipped"
have socat && receivers="$receivers socat" || echo "bench: socat not installed (apt-get install socat): skipped"
[ -n "${BENCH_BASELINE:-}" ] && receivers="$receivers baseline"
[ -n "${BENCH_RECEIVERS:-}" ] && receivers="$BENCH_RECEIVERS"
have perf || echo "bench: perf not installed (apt-get install linux-perf): no syscall counts"

# CPU nanoseconds used so far by all threads of pid.
cpu_ns() {
  local t=0 f v
  for f in /proc/"$1"/task/*/schedstat; do
    read -r v _ <"$f" 2>/dev/null && t=$((t + v))
  done
  echo "$t"
}

hwm_kib() { awk '/^VmHWM:/ { print $2 }' /proc/"$1"/status; }

# Waits until pid stops using CPU (the backlog is drained), at most 15 s.
wait_idle() {
  local last now i
  last=$(cpu_ns "$1")
  for i in $(seq 150); do
    sleep 0.2
    now=$(cpu_ns "$1")
    [ "$now" = "$last" ] && return
    last=$now
  done
}

# Starts receiver $1 on port $2 writing into dir $3 with extra udplogger
# options $4; sets rpid.
start_receiver() {
  local r=$1 p=$2 d=$3 extra=$4
  case $r in
    null) "$bin/nullrecv" "$p" 8388608 >"$d/null.out" 2>&1 & ;;
    plain) "$bin/nullrecv" "$p" 8388608 "$d/plain.log" >"$d/null.out" 2>&1 & ;;
    udplogger) "$top/udplogger" port="$p" dir="$d" $extra >"$d/ul.out" 2>&1 & ;;
    allow16) "$top/udplogger" port="$p" dir="$d" $extra "$allow16" >"$d/ul.out" 2>&1 & ;;
    baseline) "$BENCH_BASELINE" port="$p" dir="$d" $extra >"$d/ul.out" 2>&1 & ;;
    socat) socat -u UDP6-RECV:"$p",rcvbuf=8388608 OPEN:"$d/socat.log",creat,append >"$d/socat.out" 2>&1 & ;;
    rsyslog)
      cat >"$d/rsyslog.conf" <<EOF
global(workDirectory="$d" net.enableDNS="off")
module(load="imudp" threads="1")
template(name="ul" type="string" string="%timegenerated:::date-rfc3339% %fromhost-ip% %rawmsg%\n")
ruleset(name="r") { action(type="omfile" file="$d/rsyslog.log" template="ul") }
input(type="imudp" port="$p" ruleset="r" rcvbufSize="8m")
EOF
      rsyslogd -n -f "$d/rsyslog.conf" -i "$d/rsyslog.pid" >"$d/rsyslog.out" 2>&1 & ;;
  esac
  rpid=$!
}

# Lines the receiver wrote (datagrams, for the null receiver).
received() {
  local r=$1 d=$2
  case $r in
    null) awk '/received/ { print $3 }' "$d/null.out" ;;
    plain) grep -cE '(^| )seq=[0-9]{10} ' "$d/plain.log" 2>/dev/null || echo 0 ;;
    udplogger|baseline|allow16) cat "$d"/*.log 2>/dev/null | grep -cE '(^| )seq=[0-9]{10} ' ;;
    socat) grep -cE '(^| )seq=[0-9]{10} ' "$d/socat.log" 2>/dev/null || echo 0 ;;
    rsyslog) grep -cE '(^| )seq=[0-9]{10} ' "$d/rsyslog.log" 2>/dev/null || echo 0 ;;
  esac
}

# One measurement: scenario name, receiver, loadgen arguments, messages
# sent (lines expected), datagrams sent, udplogger options.
measure() {
  local name=$1 r=$2 gen=$3 lines=$4 dgrams=$5 extra=${6:-}
  local d=$work/run.$name.$r.$RANDOM p pid a b perfpid="" sys="-" wv="-"
  mkdir -p "$d"
  port=$((port + 1))
  p=$port
  start_receiver "$r" "$p" "$d" "$extra"
  pid=$rpid
  sleep 0.5
  if have perf; then
    perf stat -x, -o "$d/perf" -e raw_syscalls:sys_enter,syscalls:sys_enter_writev,syscalls:sys_enter_write \
      -p "$pid" >/dev/null 2>&1 &
    perfpid=$!
    sleep 0.3
  fi
  a=$(cpu_ns "$pid")
  "$bin/loadgen" port="$p" $gen >"$d/loadgen.out"
  wait_idle "$pid"
  b=$(cpu_ns "$pid")
  local hwm
  hwm=$(hwm_kib "$pid")
  if [ -n "$perfpid" ]; then
    kill -INT "$perfpid"
    wait "$perfpid" 2>/dev/null
    sys=$(awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$d/perf")
    local writes
    writes=$(awk -F, '/sys_enter_write/ { n += $1 } END { print n + 0 }' "$d/perf")
    [ "${writes:-0}" -gt 0 ] && wv=$(awk -v l="$lines" -v w="$writes" 'BEGIN { printf "%.1f", l / w }')
    sys=$(awk -v s="${sys:-0}" -v n="$dgrams" 'BEGIN { printf "%.0f", s * 1000 / n }')
  fi
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null
  local got lost
  got=$(received "$r" "$d")
  lost=$((lines - ${got:-0}))
  [ "$r" = null ] && lost=$((dgrams - ${got:-0}))
  echo "$name $r $(( (b - a) / dgrams )) $lost $hwm $sys $wv" >>"$results"
  rm -rf "$d"
}

# Each scenario: name, loadgen arguments, lines, datagrams, udplogger options.
run_scenario() {
  local name=$1 gen=$2 lines=$3 dgrams=$4 extra=$5 only=${6:-$receivers} rep r
  [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $name "* ]] || return 0
  [ -n "${BENCH_BASELINE:-}" ] && [[ " $only " != *" baseline "* ]] && only="$only baseline"
  echo "bench: $name ($reps runs each: $only)" >&2
  local reversed=""
  for r in $only; do reversed="$r $reversed"; done
  for rep in $(seq "$reps"); do  # every other run in reverse order: no receiver always goes first
    local order=$only
    [ $((rep % 2)) = 0 ] && order=$reversed
    for r in $order; do measure "$name" "$r" "$gen" "$lines" "$dgrams" "$extra"; done
  done
}

run_scenario paced-16 "count=$count senders=16 rate=$rate" "$count" "$count" ""
run_scenario paced-1000 "count=$count senders=1000 rate=$rate distinct=1" "$count" "$count" "clients=20000"
run_scenario paced-10000 "count=$count senders=10000 rate=$rate distinct=1" "$count" "$count" "clients=20000"
# The cost of allow=: the paced-1000 load, udplogger without a list and
# with 16 networks (the sender in the last), runs interleaved.
run_scenario allow-16 "count=$count senders=1000 rate=$rate distinct=1" "$count" "$count" \
  "clients=20000" "udplogger allow16"
frag_msgs=$((count / 6))
run_scenario ext-frag "count=$frag_msgs senders=16 rate=$((rate / 3)) mode=frag" \
  "$frag_msgs" $((frag_msgs * 3)) "" "null udplogger"
run_scenario burst "count=$burst senders=16" "$burst" "$burst" ""
run_scenario partial-1000 "count=1000 senders=1000 mode=partial distinct=1" 1000 1000 "clients=1024" "null udplogger"
run_scenario partial-5000 "count=5000 senders=5000 mode=partial distinct=1" 5000 5000 "clients=1024" "null udplogger"

# The table: medians per scenario and receiver, ratio to the null receiver.
report() {
  echo "udplogger benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)"
  echo "loopback, 100-byte lines, paced at $rate datagrams/s ($count datagrams), burst of $burst flat out; medians of $reps runs"
  echo
  echo "| scenario | receiver | CPU ns/datagram | ratio to null | lines lost | VmHWM KiB | syscalls/1000 datagrams | lines per write |"
  echo "|---|---|---|---|---|---|---|---|"
  awk '
    { key = $1 " " $2; n[key]++; cpu[key, n[key]] = $3; lost[key, n[key]] = $4
      hwm[key, n[key]] = $5; sys[key, n[key]] = $6; wv[key, n[key]] = $7
      if (!(key in seen)) { seen[key] = 1; order[++k] = key } }
    function median(arr, key, m,   i, j, t, v) {
      for (i = 1; i <= m; i++) v[i] = arr[key, i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
      return v[int((m + 1) / 2)]
    }
    END {
      for (i = 1; i <= k; i++) {
        key = order[i]; split(key, part, " ")
        c = median(cpu, key, n[key]); base = median(cpu, part[1] " null", n[part[1] " null"])
        printf "| %s | %s | %d | %.2fx | %s | %s | %s | %s |\n", part[1], part[2], c, (base > 0 ? c / base : 0),
          median(lost, key, n[key]), median(hwm, key, n[key]), median(sys, key, n[key]), median(wv, key, n[key])
      }
    }' "$results"
}

# The targets of issue 4, checked on the medians.
targets() {
  local table=$1
  echo
  echo "targets:"
  local s ratio
  for s in paced-16 paced-1000 paced-10000; do
    ratio=$(awk -F'|' -v s=" $s " '$2 == s && $3 == " udplogger " { gsub(/[ x]/, "", $5); print $5 }' "$table")
    [ -n "$ratio" ] || continue
    awk -v r="$ratio" -v s="$s" 'BEGIN { printf "  %s CPU per datagram <= 1.05x null: %sx %s\n", s, r, (r <= 1.05 ? "PASS" : "FAIL") }'
  done
  local with without
  with=$(awk -F'|' '$2 == " allow-16 " && $3 == " allow16 " { print $4 + 0 }' "$table")
  without=$(awk -F'|' '$2 == " allow-16 " && $3 == " udplogger " { print $4 + 0 }' "$table")
  [ -n "$with" ] && [ -n "$without" ] && awk -v a="$with" -v b="$without" 'BEGIN {
    printf "  allow= with 16 networks: %d vs %d ns/datagram without (%.2fx)\n", a, b, a / b }'
  local ul nl
  ul=$(awk -F'|' '$2 == " burst " && $3 == " udplogger " { print $6 + 0 }' "$table")
  nl=$(awk -F'|' '$2 == " burst " && $3 == " null " { print $6 + 0 }' "$table")
  [ -n "$ul" ] && echo "  burst: lines lost ($ul) <= null receiver's loss ($nl): $([ "${ul:-1}" -le "${nl:-0}" ] && echo PASS || echo FAIL)"
  local h1 h5
  h1=$(awk -F'|' '$2 == " partial-1000 " && $3 == " udplogger " { print $7 + 0 }' "$table")
  h5=$(awk -F'|' '$2 == " partial-5000 " && $3 == " udplogger " { print $7 + 0 }' "$table")
  [ -n "$h1" ] && echo "  VmHWM with 1000 partial lines <= 4096 KiB: $h1 KiB $([ "${h1:-99999}" -le 4096 ] && echo PASS || echo FAIL)"
  [ -n "$h5" ] && echo "  VmHWM flat past clients= (5000 senders, clients=1024): $h5 KiB $([ "${h5:-99999}" -le $(( ${h1:-0} + 512 )) ] && echo PASS || echo FAIL)"
  strip -o "$work/udplogger.stripped" "$top/udplogger"
  local size
  size=$(stat -c %s "$work/udplogger.stripped")
  echo "  stripped binary <= 65536 bytes: $size $([ "$size" -le 65536 ] && echo PASS || echo FAIL)"
}

report >"$work/table"
cat "$work/table"
targets "$work/table"
[ -n "${BENCH_RESULTS:-}" ] && cp "$results" "$BENCH_RESULTS"  # one line per run, for per-run ratios
rm -rf "$work"
