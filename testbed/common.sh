# shellcheck shell=bash
# Shared by testbed/up and testbed/down: where things live, and how to tell
# whether a daemon from a pidfile is still running. Sourced, not executed.

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
