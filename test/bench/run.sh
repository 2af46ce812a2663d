#!/usr/bin/env bash
# udplogger benchmark: CPU, loss, memory and syscalls per datagram against
# floors that batch the way udplogger does, and the peers, on loopback;
# then the time from sendto until a line is readable in the file.  Run it
# with `make bench`; needs root for 10000 sockets and SO_RCVBUFFORCE, and
# Debian's rsyslog, socat and linux-perf for the peers and syscall counts
# (missing ones are skipped and say so).
#
# Receivers: writer (the floor: udplogger's batching and pause, senders'
# addresses and kernel stamps, one writev of the raw payloads per batch),
# bare (the writer without addresses), format (the writer, each payload
# behind a prefix as long as udplogger's: what the line format costs the
# kernel; side by side only), pause (batching alone), null (wakes
# for every datagram, context only), plain (null plus a writev per wakeup),
# udplogger, metrics (udplogger with metrics=), v1.1 (BENCH_V11: a
# udplogger 1.1 binary), rsyslog, socat,
# baseline (BENCH_BASELINE).
#
# Environment: BENCH_REPS (3), BENCH_COUNT (200000 paced datagrams),
# BENCH_RATE (45000/s), BENCH_BURST (1000000), BENCH_ONLY (scenario names,
# space separated: all when unset), BENCH_RECEIVERS (receivers to run: all
# available when unset), BENCH_BASELINE (another udplogger binary, such as
# the previous commit's, measured in the same runs as "baseline"), BENCH_V11
# (udplogger 1.1, built from its udplogger.c), BENCH_VARIANTS ("NAME=BINARY
# ...": more udplogger builds, each a receiver of that name, for trying a
# change in the same runs), BENCH_TOGETHER (the receivers of the
# together-* scenarios, run at the same time; "writer bare format udplogger" when
# unset), BENCH_PIN (1, the default on 2 or more cores: receivers pinned to
# the last core), BENCH_RESULTS (a file to keep the raw results in:
# scenario receiver ns lost hwm syscalls lines-per-write rep, one line per
# run; latency rows: scenario receiver p50 p99 max seen sent rep).
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
receivers="writer bare pause null plain udplogger"
[ -n "${BENCH_V11:-}" ] && receivers="$receivers v1.1" || echo "bench: BENCH_V11 not set (a udplogger 1.1 binary): no comparison with 1.1"
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

# BENCH_PIN=1 (the default on 2 or more cores): the receiver on the last
# core, a single sending process on the others, so that neither takes the
# other's core and the loopback's work is charged to the sender, as it is
# in every run; several sending processes run anywhere, the receiver still
# pinned.
pin=${BENCH_PIN:-1}
[ "$(nproc)" -ge 2 ] || pin=0
recv_cpu=$(( $(nproc) - 1 ))
on_recv_cpu=()
on_send_cpus=()
if [ "$pin" = 1 ]; then
  on_recv_cpu=(taskset -c "$recv_cpu")
  on_send_cpus=(taskset -c "0-$((recv_cpu - 1))")
fi

# Starts receiver $1 on port $2 writing into dir $3 with extra udplogger
# options $4; sets rpid.
start_receiver() {
  local r=$1 p=$2 d=$3 extra=$4 hosts=""
  # udplogger tracks as many hosts as senders where clients= is raised (the
  # bench's senders are distinct addresses): a smaller hosts= churns.
  [[ " $extra " == *" clients="* ]] && hosts="hosts=${extra##*clients=}" && hosts=${hosts%% *}
  case $r in
    null|pause) "${on_recv_cpu[@]}" "$bin/nullrecv" port="$p" mode="$r" >"$d/null.out" 2>&1 & ;;
    plain|writer|format) "${on_recv_cpu[@]}" "$bin/nullrecv" port="$p" mode="$r" file="$d/$r.log" >"$d/null.out" 2>&1 & ;;
    bare) "${on_recv_cpu[@]}" "$bin/nullrecv" port="$p" mode=writer from=0 file="$d/bare.log" >"$d/null.out" 2>&1 & ;;
    v1.1) "${on_recv_cpu[@]}" "$BENCH_V11" port="$p" dir="$d" $extra >"$d/ul.out" 2>&1 & ;;
    udplogger) "${on_recv_cpu[@]}" "$top/udplogger" port="$p" dir="$d" $extra $hosts >"$d/ul.out" 2>&1 & ;;
    metrics) "${on_recv_cpu[@]}" "$top/udplogger" port="$p" dir="$d" $extra $hosts metrics="$d/udplogger.prom" >"$d/ul.out" 2>&1 & ;;
    allow16) "${on_recv_cpu[@]}" "$top/udplogger" port="$p" dir="$d" $extra "$allow16" >"$d/ul.out" 2>&1 & ;;
    baseline) "${on_recv_cpu[@]}" "$BENCH_BASELINE" port="$p" dir="$d" $extra >"$d/ul.out" 2>&1 & ;;
    socat) "${on_recv_cpu[@]}" socat -u UDP6-RECV:"$p",rcvbuf=8388608 OPEN:"$d/socat.log",creat,append >"$d/socat.out" 2>&1 & ;;
    rsyslog)
      cat >"$d/rsyslog.conf" <<EOF
global(workDirectory="$d" net.enableDNS="off")
module(load="imudp" threads="1")
template(name="ul" type="string" string="%timegenerated:::date-rfc3339% %fromhost-ip% %rawmsg%\n")
ruleset(name="r") { action(type="omfile" file="$d/rsyslog.log" template="ul") }
input(type="imudp" port="$p" ruleset="r" rcvbufSize="8m")
EOF
      "${on_recv_cpu[@]}" rsyslogd -n -f "$d/rsyslog.conf" -i "$d/rsyslog.pid" >"$d/rsyslog.out" 2>&1 & ;;
    *) local v path=""  # BENCH_VARIANTS
      for v in ${BENCH_VARIANTS:-}; do [ "${v%%=*}" = "$r" ] && path=${v#*=}; done
      "${on_recv_cpu[@]}" "$path" port="$p" dir="$d" $extra >"$d/ul.out" 2>&1 & ;;
  esac
  rpid=$!
}

# Lines the receiver wrote (datagrams, for the null receiver).
received() {
  local r=$1 d=$2
  case $r in
    null|pause) awk '/received/ { print $3 }' "$d/null.out" ;;
    socat) grep -cE '(^| )seq=[0-9]{10} ' "$d/socat.log" 2>/dev/null || echo 0 ;;
    rsyslog) grep -cE '(^| )seq=[0-9]{10} ' "$d/rsyslog.log" 2>/dev/null || echo 0 ;;
    *) cat "$d"/*.log 2>/dev/null | grep -cE '(^| )seq=[0-9]{10} ' ;;  # udplogger and the rest
  esac
}

# One measurement: scenario name, receiver, loadgen arguments (procs=N
# first: N loadgen processes share the count), messages sent (lines
# expected), datagrams sent, udplogger options, repetition.
measure() {
  local name=$1 r=$2 gen=$3 lines=$4 dgrams=$5 extra=${6:-} rep=${7:-1}
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
  local procs=1 i
  if [[ $gen == procs=* ]]; then procs=${gen%% *}; procs=${procs#procs=}; gen=${gen#* }; fi
  local gens=() where=("${on_send_cpus[@]}")
  [ "$procs" = 1 ] || where=()
  for i in $(seq "$procs"); do
    "${where[@]}" "$bin/loadgen" port="$p" $gen >"$d/loadgen.$i.out" &
    gens+=($!)
  done
  wait "${gens[@]}"
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
  # The floors write raw fragments and partial lines: no lines to count.
  [[ $r == writer || $r == bare ]] && [[ $name == ext-frag || $name == partial-* ]] && lost=-
  echo "$name $r $(( (b - a) / dgrams )) $lost $hwm $sys $wv $rep" >>"$results"
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
    for r in $order; do measure "$name" "$r" "$gen" "$lines" "$dgrams" "$extra" "$rep"; done
  done
}

run_scenario paced-16 "count=$count senders=16 rate=$rate" "$count" "$count" ""
run_scenario paced-1000 "count=$count senders=1000 rate=$rate distinct=1" "$count" "$count" "clients=20000"
run_scenario paced-10000 "count=$count senders=10000 rate=$rate distinct=1" "$count" "$count" "clients=20000"
run_scenario paced-long "count=$count senders=16 rate=$rate len=1000" "$count" "$count" ""
run_scenario burst "count=$burst senders=16" "$burst" "$burst" ""
run_scenario burst-long "count=$((burst / 4)) senders=16 len=1000" $((burst / 4)) $((burst / 4)) ""
# 400k datagrams/s from two sending processes, the default rbuf.
run_scenario paced-400k "procs=2 count=$((burst / 2)) senders=16 rate=200000" "$burst" "$burst" "" \
  "writer udplogger${BENCH_V11:+ v1.1}"
# The cost of allow=: the paced-1000 load, udplogger without a list and
# with 16 networks (the sender in the last), runs interleaved.
run_scenario allow-16 "count=$count senders=1000 rate=$rate distinct=1" "$count" "$count" \
  "clients=20000" "udplogger allow16"
frag_msgs=$((count / 6))
run_scenario ext-frag "count=$frag_msgs senders=16 rate=$((rate / 3)) mode=frag" \
  "$frag_msgs" $((frag_msgs * 3)) "" "writer udplogger"
run_scenario partial-1000 "count=1000 senders=1000 mode=partial distinct=1" 1000 1000 "clients=1024" "writer udplogger"
run_scenario partial-5000 "count=5000 senders=5000 mode=partial distinct=1" 5000 5000 "clients=1024" "writer udplogger"

# Side by side: the floors and udplogger at the same time on the same
# core, each with a load generator of its own on the other core.  A shared
# machine's speed changes from one run to the next (the same binary's ratio
# to a floor run before or after it moved by up to 50%); receivers running
# at once share every change, so their ratio holds still.  Rows are named
# together-SCENARIO; no syscall counts (perf would see the others).
measure_together() {
  local name=$1 rcvs=$2 gen=$3 lines=$4 extra=$5 rep=$6
  local r i d pids=() ports=() gens=() dirs=() a=() b=()
  for r in $rcvs; do
    d=$work/together.$name.$r.$RANDOM
    mkdir -p "$d"
    port=$((port + 1))
    start_receiver "$r" "$port" "$d" "$extra"
    pids+=("$rpid")
    ports+=("$port")
    dirs+=("$d")
  done
  sleep 0.5
  for i in "${!pids[@]}"; do a[i]=$(cpu_ns "${pids[i]}"); done
  for i in "${!pids[@]}"; do
    "${on_send_cpus[@]}" "$bin/loadgen" port="${ports[i]}" $gen >"${dirs[i]}/loadgen.out" &
    gens+=($!)
  done
  wait "${gens[@]}"
  for i in "${!pids[@]}"; do wait_idle "${pids[i]}"; done
  for i in "${!pids[@]}"; do b[i]=$(cpu_ns "${pids[i]}"); done
  i=0
  for r in $rcvs; do
    local hwm got
    hwm=$(hwm_kib "${pids[i]}")
    kill -TERM "${pids[i]}"
    wait "${pids[i]}" 2>/dev/null
    got=$(received "$r" "${dirs[i]}")
    echo "together-$name $r $(( (b[i] - a[i]) / lines )) $((lines - ${got:-0})) $hwm - - $rep" >>"$results"
    rm -rf "${dirs[i]}"
    i=$((i + 1))
  done
}

run_together() {
  local name=$1 gen=$2 lines=$3 extra=$4 only="writer bare format udplogger" rep
  [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" together-$name "* ]] || return 0
  [ -n "${BENCH_BASELINE:-}" ] && only="$only baseline"
  [ -n "${BENCH_TOGETHER:-}" ] && only=$BENCH_TOGETHER
  echo "bench: together-$name ($reps runs: $only at once)" >&2
  for rep in $(seq "$reps"); do measure_together "$name" "$only" "$gen" "$lines" "$extra" "$rep"; done
}
run_together paced-16 "count=$count senders=16 rate=$rate" "$count" ""
run_together paced-1000 "count=$count senders=1000 rate=$rate distinct=1" "$count" "clients=20000"
run_together paced-10000 "count=$count senders=10000 rate=$rate distinct=1" "$count" "clients=20000"
run_together burst "count=$burst senders=16" "$burst" ""

# Throughput at saturation of n udplogger processes sharing the port
# (reuseport=1) and the daily file: two loadgen processes flat out, 500
# senders each; lines written per second from the first send until the
# receivers are idle.
measure_instances() {
  local n=$1 rep=$2 total=$3
  local d=$work/inst.$n.$RANDOM p i pids=() gens=() t0 t1
  mkdir -p "$d"
  port=$((port + 1))
  p=$port
  for i in $(seq "$n"); do
    "$top/udplogger" port="$p" dir="$d" reuseport=1 clients=2000 >"$d/ul.$i.out" 2>&1 &
    pids+=($!)
  done
  sleep 0.5
  t0=$(date +%s%N)
  for i in 1 2; do
    "$bin/loadgen" port="$p" count=$((total / 2)) senders=500 distinct=1 >"$d/loadgen.$i.out" &
    gens+=($!)
  done
  wait "${gens[@]}"
  for i in "${pids[@]}"; do wait_idle "$i"; done
  t1=$(date +%s%N)
  for i in "${pids[@]}"; do kill -TERM "$i"; wait "$i" 2>/dev/null; done
  local got
  got=$(cat "$d"/*.log | grep -cE '(^| )seq=[0-9]{10} ')
  echo "instances-$n udplogger $(( got * 1000000000 / (t1 - t0) )) $(( total - got )) $rep" >>"$instances"
  rm -rf "$d"
}

instances=$work/instances
: >"$instances"
if [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" instances "* ]]; then
  echo "bench: instances (1 and 2 processes, $reps runs each)" >&2
  for rep in $(seq "$reps"); do
    measure_instances 1 "$rep" "$burst"
    measure_instances 2 "$rep" "$burst"
  done
fi

# Latency: sendto until readable in the file, for one receiver: scenario
# name, probe rate and count, background loadgen arguments (or ""), rep.
measure_latency() {
  local name=$1 r=$2 lrate=$3 lcount=$4 bg=$5 rep=$6
  local d=$work/lat.$name.$r.$RANDOM p pid bgpid="" file
  mkdir -p "$d"
  port=$((port + 1))
  p=$port
  start_receiver "$r" "$p" "$d" "clients=20000"
  pid=$rpid
  sleep 0.5
  case $r in
    writer) file=$d/writer.log; : >>"$file" ;;
    *) file=$(ls "$d"/*.log | head -n 1) ;;
  esac
  if [ -n "$bg" ]; then
    "$bin/loadgen" port="$p" $bg >"$d/bg.out" &
    bgpid=$!
    sleep 0.5
  fi
  local out
  out=$("$bin/latency" port="$p" file="$file" rate="$lrate" count="$lcount")
  [ -n "$bgpid" ] && { kill "$bgpid" 2>/dev/null; wait "$bgpid" 2>/dev/null; }
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null
  echo "$out" | awk -v n="$name" -v r="$r" -v rep="$rep" '{ m = split($0, f, /[ =]/)
    for (i = 1; i < m; i++) v[f[i]] = f[i + 1]
    print n, r, v["p50"], v["p99"], v["max"], v["seen"], v["sent"], rep }' >>"$latency"
  rm -rf "$d"
}

latency=$work/latency
: >"$latency"
run_latency() {
  local name=$1 lrate=$2 lcount=$3 bg=$4 only="writer udplogger${BENCH_V11:+ v1.1}" rep r
  [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $name "* ]] || return 0
  [ -n "${BENCH_BASELINE:-}" ] && only="$only baseline"
  [ -n "${BENCH_RECEIVERS:-}" ] && only=$BENCH_RECEIVERS
  echo "bench: $name ($reps runs each: $only)" >&2
  for rep in $(seq "$reps"); do
    for r in $only; do measure_latency "$name" "$r" "$lrate" "$lcount" "$bg" "$rep"; done
  done
}
run_latency latency-1 1 10 ""
run_latency latency-1000 1000 3000 ""
run_latency latency-200-under-40k 200 1000 "count=$((rate * 8)) senders=1000 rate=40000 distinct=1"

# The tables: medians per scenario and receiver; ratios are medians of the
# ratios within each repetition, to the writer floor and to the null receiver.
report() {
  echo "udplogger benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)"
  echo "loopback, 100-byte lines (long: 1000), paced at $rate datagrams/s ($count datagrams), burst of $burst flat out; medians of $reps runs"
  echo
  echo "| scenario | receiver | CPU ns/datagram | ratio to writer | ratio to null | lines lost | VmHWM KiB | syscalls/1000 datagrams | lines per write |"
  echo "|---|---|---|---|---|---|---|---|---|"
  awk '
    { key = $1 " " $2; n[key]++; cpu[key, n[key]] = $3; lost[key, n[key]] = $4
      hwm[key, n[key]] = $5; sys[key, n[key]] = $6; wv[key, n[key]] = $7; at[$1, $2, $8] = $3
      reps[key, n[key]] = $8
      if (!(key in seen)) { seen[key] = 1; order[++k] = key } }
    function median(arr, key, m,   i, j, t, v) {
      for (i = 1; i <= m; i++) v[i] = arr[key, i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
      return v[int((m + 1) / 2)]
    }
    function ratio(key, s, r, floor,   i, m, q) {
      m = 0
      for (i = 1; i <= n[key]; i++)
        if ((s, floor, reps[key, i]) in at && at[s, floor, reps[key, i]] > 0)
          q[key, ++m] = cpu[key, i] / at[s, floor, reps[key, i]]
      return m ? sprintf("%.2fx", median(q, key, m)) : "-"
    }
    END {
      for (i = 1; i <= k; i++) {
        key = order[i]; split(key, part, " ")
        printf "| %s | %s | %d | %s | %s | %s | %s | %s | %s |\n", part[1], part[2], median(cpu, key, n[key]),
          ratio(key, part[1], part[2], "writer"), ratio(key, part[1], part[2], "null"),
          median(lost, key, n[key]), median(hwm, key, n[key]), median(sys, key, n[key]), median(wv, key, n[key])
      }
    }' "$results"
  if [ -s "$instances" ]; then
    echo
    echo "| saturation, reuseport=1 | lines written/s | lines lost |"
    echo "|---|---|---|"
    awk '{ key = $1; n[key]++; v[key, n[key]] = $3; l[key, n[key]] = $4; if (!(key in s)) { s[key] = 1; o[++k] = key } }
      function median(arr, key, m,   i, j, t, w) {
        for (i = 1; i <= m; i++) w[i] = arr[key, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (w[j] + 0 < w[i] + 0) { t = w[i]; w[i] = w[j]; w[j] = t }
        return w[int((m + 1) / 2)]
      }
      END { for (i = 1; i <= k; i++) printf "| %s | %d | %d |\n", o[i], median(v, o[i], n[o[i]]), median(l, o[i], n[o[i]]) }' "$instances"
  fi
  [ -s "$latency" ] || return 0
  echo
  echo "| latency | receiver | p50 ms | p99 ms | max ms | lines seen |"
  echo "|---|---|---|---|---|---|"
  awk '
    { key = $1 " " $2; n[key]++; p50[key, n[key]] = $3; p99[key, n[key]] = $4; mx[key, n[key]] = $5
      seen[key, n[key]] = $6 "/" $7; if (!(key in s)) { s[key] = 1; order[++k] = key } }
    function median(arr, key, m,   i, j, t, v) {
      for (i = 1; i <= m; i++) v[i] = arr[key, i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
      return v[int((m + 1) / 2)]
    }
    END {
      for (i = 1; i <= k; i++) {
        key = order[i]; split(key, part, " ")
        printf "| %s | %s | %s | %s | %s | %s |\n", part[1], part[2], median(p50, key, n[key]),
          median(p99, key, n[key]), median(mx, key, n[key]), seen[key, n[key]]
      }
    }' "$latency"
}

# A column of the table for a scenario and receiver ("" when not measured).
cell() { awk -F'|' -v s=" $1 " -v r=" $2 " -v c="$3" '$2 == s && $3 == r { v = $(c); gsub(/[ x]/, "", v); print v }' "$4"; }

# The median of the per-run ratios of receiver a to receiver b in a
# side-by-side scenario, to 3 places, so that 1.151 is not passed as 1.15.
together_ratio() {
  awk -v s="$1" -v a="$2" -v b="$3" '$1 == s && $2 == a { u[$8] = $3 } $1 == s && $2 == b { f[$8] = $3 }
    END { for (r in u) if (f[r] > 0) print u[r] / f[r] }' "$results" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", v[int((NR + 1) / 2)] }'
}

# The targets of issue 12, checked on the medians.
targets() {
  local table=$1 s v w
  echo
  echo "targets:"
  # Run in turn, a ratio moves with the machine's speed: context only.
  for s in paced-16 paced-1000 paced-10000 burst; do
    v=$(cell "$s" udplogger 5 "$table")
    [ -n "$v" ] && [ "$v" != - ] && echo "  $s: CPU per datagram, run in turn (context, not a target): ${v}x the writer floor"
  done
  for s in together-paced-16 together-paced-1000 together-paced-10000 together-burst; do
    v=$(together_ratio "$s" udplogger writer)
    [ -n "$v" ] && awk -v r="$v" -v s="$s" 'BEGIN {
      printf "  %s: CPU per datagram <= 1.15x the writer floor: %sx %s\n", s, r, (r <= 1.15 ? "PASS" : "FAIL") }'
  done
  for s in together-paced-16 together-paced-1000 together-paced-10000 together-burst; do
    v=$(together_ratio "$s" udplogger bare)
    [ -n "$v" ] && awk -v r="$v" -v s="$s" 'BEGIN {
      printf "  %s: CPU per datagram <= 1.15x the bare floor (no addresses): %sx %s\n", s, r, (r <= 1.15 ? "PASS" : "FAIL") }'
    v=$(together_ratio "$s" format writer)
    [ -n "$v" ] && echo "  $s: the line format's bytes, format floor to writer floor: ${v}x"
  done
  for s in paced-16 paced-1000 paced-10000 paced-long burst burst-long paced-400k; do
    v=$(cell "$s" udplogger 4 "$table")
    w=$(cell "$s" v1.1 4 "$table")
    [ -n "$v" ] && [ -n "$w" ] && awk -v a="$v" -v b="$w" -v s="$s" 'BEGIN {
      printf "  %s: cheaper than udplogger 1.1: %d vs %d ns/datagram %s\n", s, a, b, (a < b ? "PASS" : "FAIL") }'
  done
  v=$(cell paced-400k udplogger 7 "$table")
  [ -n "$v" ] && echo "  paced-400k (2 senders, default rbuf): 0 lines lost: $v $([ "$v" = 0 ] && echo PASS || echo FAIL)"
  v=$(cell latency-1000 udplogger 4 "$table")
  w=$(cell latency-1000 udplogger 5 "$table")
  [ -n "$v" ] && awk -v a="$v" -v b="$w" 'BEGIN {
    printf "  latency at 1000/s: p50 <= 1 ms and p99 <= 3 ms: %s and %s ms %s\n", a, b, (a <= 1 && b <= 3 ? "PASS" : "FAIL") }'
  w=$(cell latency-200-under-40k udplogger 5 "$table")
  [ -n "$w" ] && awk -v b="$w" 'BEGIN { printf "  latency under 40k/s: p99 <= 6 ms: %s ms %s\n", b, (b <= 6 ? "PASS" : "FAIL") }'
  local with without
  with=$(cell allow-16 allow16 4 "$table")
  without=$(cell allow-16 udplogger 4 "$table")
  [ -n "$with" ] && [ -n "$without" ] && awk -v a="$with" -v b="$without" 'BEGIN {
    printf "  allow= with 16 networks: %d vs %d ns/datagram without (%.2fx)\n", a, b, a / b }'
  v=$(cell partial-1000 udplogger 8 "$table")
  [ -n "$v" ] && echo "  VmHWM with 1000 partial lines < 4096 KiB: $v KiB $([ "$v" -lt 4096 ] && echo PASS || echo FAIL)"
  w=$(cell partial-5000 udplogger 8 "$table")
  [ -n "$w" ] && echo "  VmHWM flat past clients= (5000 senders, clients=1024): $w KiB $([ "$w" -le $(( ${v:-0} + 512 )) ] && echo PASS || echo FAIL)"
}

report >"$work/table"
cat "$work/table"
targets "$work/table"
if [ -n "${BENCH_RESULTS:-}" ]; then  # one line per run, for per-run ratios
  cp "$results" "$BENCH_RESULTS"
  cat "$latency" "$instances" >>"$BENCH_RESULTS"
fi
rm -rf "$work"
