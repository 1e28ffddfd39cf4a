# shellcheck shell=bash
# Shared by testbed/up, testbed/down and testbed/sge: where things live, how
# to tell whether a daemon from a pidfile is still running, and how the Grid
# Engine daemons are started and stopped. Sourced, not executed.

TESTBED_ETC=/etc/sheepdog-testbed
TESTBED_VAR=/var/lib/sheepdog-testbed
TESTBED_RUN=/run/sheepdog-testbed

SSHD_CONFIG=$TESTBED_ETC/sshd_config
SSHD_PIDFILE=$TESTBED_RUN/sshd.pid
SSH_PORT=2222

REDIS_CONFIG=$TESTBED_ETC/redis.conf
REDIS_PASSWORD_FILE=$TESTBED_ETC/redis.password
REDIS_DIR=$TESTBED_VAR/redis
REDIS_PIDFILE=$REDIS_DIR/redis.pid
REDIS_PORT=6390

SGE_SPOOL=/var/spool/gridengine
QMASTER_PIDFILE=$SGE_SPOOL/qmaster/qmaster.pid
# The execd spool dir is named after what 127.0.0.1 reverse-resolves to
# ("localhost" here), not after $(hostname), so find it by glob.
EXECD_PIDFILE_GLOB="$SGE_SPOOL/execd/*/execd.pid"

# The only environment the daemons get (notes item 3: jobs inherit it).
DAEMON_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[testbed %5.1fs] %s\n' "$(elapsed)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Seconds since the script started, with one decimal.
TESTBED_T0=$(date +%s.%N)
elapsed() { awk -v a="$TESTBED_T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# pid_alive PID [COMM]: true if PID exists, is not a zombie (PID 1 here reaps
# orphans only now and then, notes item 11) and, if COMM is given, is that
# program (guards against a stale pidfile whose pid was reused).
pid_alive() {
    local pid=$1 comm=${2:-} stat state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    state=${stat##*) }          # comm may contain spaces or parens
    state=${state%% *}
    [[ $state != Z && $state != X ]] || return 1
    if [[ -n $comm ]]; then
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    fi
}

# pidfile_pid FILE: the pid in FILE, or nothing.
pidfile_pid() { [[ -r $1 ]] && tr -dc '0-9' <"$1" || true; }

# running_from_pidfile FILE COMM: true if FILE names a live COMM process.
running_from_pidfile() {
    local pid
    pid=$(pidfile_pid "$1")
    [[ -n $pid ]] && pid_alive "$pid" "$2"
}

# stop_pidfile NAME FILE COMM [TIMEOUT]: SIGTERM the process, wait for it to
# exit (a zombie counts as exited), SIGKILL after TIMEOUT seconds.
stop_pidfile() {
    local name=$1 file=$2 comm=$3 timeout=${4:-15} pid i
    pid=$(pidfile_pid "$file")
    if [[ -z $pid ]] || ! pid_alive "$pid" "$comm"; then
        log "$name: not running"
        rm -f "$file"
        return 0
    fi
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        pid_alive "$pid" "$comm" || break
        sleep 0.1
    done
    if pid_alive "$pid" "$comm"; then
        log "$name: still running after ${timeout}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            pid_alive "$pid" "$comm" || break
            sleep 0.1
        done
        pid_alive "$pid" "$comm" && die "$name: pid $pid survived SIGKILL"
    fi
    rm -f "$file"
    log "$name: stopped"
}

# ---------------------------------------------------------------- grid engine
# Starting and stopping the daemons: shared by testbed/up, testbed/down and
# testbed/sge (which tests use to stop and start the qmaster mid-request).

load_sge_env() {
    # Debian's q* wrappers read /etc/default/gridengine (notes item 6).
    # shellcheck disable=SC1091
    source /etc/default/gridengine
    export SGE_ROOT SGE_CELL
    SGE_CELL_DIR=$SGE_ROOT/$SGE_CELL
}

# env -i: jobs inherit the execd's environment (notes item 3).
start_sge_daemon() {
    # setsid: sge_execd daemonizes without leaving the caller's session, so a
    # caller whose session is torn down (a CI step, a terminal) would take it along.
    setsid env -i PATH="$DAEMON_PATH" LANG=C.UTF-8 SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" "$@"
}

qmaster_running() { running_from_pidfile "$QMASTER_PIDFILE" sge_qmaster; }

execd_running() {
    local f
    for f in $EXECD_PIDFILE_GLOB; do
        running_from_pidfile "$f" sge_execd && return 0
    done
    return 1
}

start_qmaster() {
    if qmaster_running; then
        log "sge: qmaster already running (pid $(pidfile_pid "$QMASTER_PIDFILE"))"
        return
    fi
    log "sge: starting sge_qmaster"
    start_sge_daemon /usr/sbin/sge_qmaster
    local i
    for ((i = 0; i < 300; i++)); do
        qconf -sh >/dev/null 2>&1 && { log "sge: qmaster answers"; return; }
        sleep 0.1
    done
    die "sge_qmaster did not answer within 30 s (see $SGE_SPOOL/qmaster/messages)"
}

# SIGTERM, and wait until it is gone (it writes its spool on the way out:
# 2-6 s). Running jobs keep running under the execd meanwhile.
stop_qmaster() { stop_pidfile sge_qmaster "$QMASTER_PIDFILE" sge_qmaster 30; }

start_execd() {
    if execd_running; then
        log "sge: execd already running"
        return
    fi
    log "sge: starting sge_execd"
    start_sge_daemon /usr/sbin/sge_execd
}

# The execd writes its pidfile only after ~2 s of registering with the
# qmaster: wait for it later, not right after starting it.
wait_for_execd() {
    local i
    for ((i = 0; i < 200; i++)); do
        execd_running && return
        sleep 0.1
    done
    die "sge_execd did not start (see $SGE_SPOOL/execd/*/messages)"
}

# Queue instances the qmaster has no execd for (state "u": unknown); all of
# them (as "?") if qstat cannot tell.
unknown_queue_instances() {
    local out
    out=$(qstat -f 2>/dev/null) || { echo "? (qstat failed)"; return; }
    awk '$1 ~ /@/ && NF >= 6 && $NF ~ /u/ { print $1 }' <<<"$out"
}

# After a qmaster restart the running execd registers again on its own, but
# on a timer: seen taking from 1 to 31 s.
wait_for_node() {
    local deadline=$((SECONDS + 90)) left
    while left=$(unknown_queue_instances) && [[ -n $left ]]; do
        ((SECONDS < deadline)) ||
            die "queue instance(s) $left still unknown after 90 s (see $SGE_SPOOL/execd/*/messages)"
        sleep 0.2
    done
    log "sge: the execd is registered"
}
