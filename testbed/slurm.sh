# shellcheck shell=bash
# The Slurm half of the testbed, next to Grid Engine: munged, a MariaDB for
# accounting, slurmdbd, slurmctld and one slurmd, all on this machine and on
# loopback. Sourced by testbed/up (setup_slurm, slurm_smoke_submit,
# slurm_smoke_check) and testbed/down (stop_slurm), after common.sh. Not
# executed.
#
# Every daemon is started directly (no init scripts, notes item 2), under
# setsid with `env -i` (jobs inherit the daemon's environment, notes item 3),
# and stopped by its own pidfile (never by name).
#
# The functions used by `up` write temporary files to $TMP, which `up` sets.

SLURM_PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

SLURM_CLUSTER=sheepdog
SLURM_PARTITION=debug
SLURM_USER=slurm
SLURM_ACCOUNT=sheepdog
SLURM_CONF=/etc/slurm/slurm.conf
SLURMDBD_CONF=/etc/slurm/slurmdbd.conf
SLURM_LOG_DIR=/var/log/slurm
SLURMCTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
# Owned by $SLURM_USER: slurmctld and slurmdbd drop root before they exit and
# could not remove a pidfile from /run itself. A stale /run/slurmctld.pid
# (Debian's default) also makes the package's prerm run scancel, which fails
# with no controller and aborts `apt-get purge` (notes item 12).
SLURM_RUN=/run/slurm
SLURMCTLD_PIDFILE=$SLURM_RUN/slurmctld.pid
SLURMD_PIDFILE=$SLURM_RUN/slurmd.pid
SLURMDBD_PIDFILE=$SLURM_RUN/slurmdbd.pid
SLURMCTLD_PORT=6817
SLURMD_PORT=6818
SLURMDBD_PORT=6819

MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGED_PIDFILE=$MUNGE_RUN/munged.pid

# Debian's data directory (initialized by the package's postinst) with our
# own config file, as for redis.
MARIADB_CONFIG=$TESTBED_ETC/mariadb.cnf
MARIADB_DATADIR=/var/lib/mysql
MARIADB_RUN=/run/mysqld
MARIADB_SOCKET=$MARIADB_RUN/mysqld.sock
MARIADB_PIDFILE=$MARIADB_RUN/mysqld.pid
MARIADB_LOG=/var/log/mysql/error.log
SLURM_DB=slurm_acct_db
SLURM_DB_USER=slurm
SLURM_DB_PASSWORD_FILE=$TESTBED_ETC/slurmdbd.password

# The only environment the Slurm daemons get (notes item 3). setsid: like
# sge_execd, they would otherwise stay in the caller's session.
start_slurm_daemon() {
    setsid env -i PATH="$DAEMON_PATH" LANG=C.UTF-8 "$@"
}

# wait_until SECONDS WHAT CMD...: poll CMD every 0.1 s; die after SECONDS.
wait_until() {
    local timeout=$1 what=$2 i
    shift 2
    for ((i = 0; i < timeout * 10; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    die "$what"
}

# install_if_changed SRC DEST MODE OWNER: install SRC as DEST unless it has
# that content already; true if DEST changed.
install_if_changed() {
    local src=$1 dest=$2 mode=$3 owner=$4
    if cmp -s "$src" "$dest"; then
        # Content unchanged; still put mode and owner right.
        chmod "$mode" "$dest"
        chown "$owner" "$dest"
        return 1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dest" || die "cannot install $dest"
}

# ---------------------------------------------------------------- munge

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

setup_munge() {
    # The postinst creates a key; make one if it is gone.
    if [[ ! -s $MUNGE_KEY ]]; then
        log "munge: creating $MUNGE_KEY"
        install -d -m 0700 -o munge -g munge "$(dirname "$MUNGE_KEY")"
        mungekey --create --keyfile="$MUNGE_KEY"
    fi
    # munged refuses a key that others can read.
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    # /run/munge comes from the init script or tmpfiles.d, neither of which
    # runs here.
    install -d -m 0755 -o munge -g munge "$MUNGE_RUN"
    if running_from_pidfile "$MUNGED_PIDFILE" munged; then
        if munge_works; then
            log "munge: munged already running (pid $(pidfile_pid "$MUNGED_PIDFILE"))"
            return
        fi
        stop_pidfile munged "$MUNGED_PIDFILE" munged 10
    fi
    rm -f "$MUNGED_PIDFILE"
    log "munge: starting munged"
    # --origin: vm resolves to 127.0.0.1 anyway; say so rather than look it up.
    start_slurm_daemon setpriv --reuid=munge --regid=munge --init-groups \
        /usr/sbin/munged --origin=127.0.0.1
    wait_until 10 "munged does not answer (see /var/log/munge/munged.log)" munge_works
}

# ---------------------------------------------------------------- mariadb

write_mariadb_config() {
    cat <<EOF
# sheepdog testbed: the accounting database for slurmdbd (written by
# testbed/up; /etc/mysql is not read). Loopback and socket only.
[mysqld]
user = mysql
datadir = $MARIADB_DATADIR
socket = $MARIADB_SOCKET
pid-file = $MARIADB_PIDFILE
log-error = $MARIADB_LOG
bind-address = 127.0.0.1
port = 3306
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
# slurmdbd logs "error: Database settings not recommended values:
# innodb_buffer_pool_size" at startup when these are under half of what it
# recommends (1024M, 64M, 900). The pool takes memory as it fills.
innodb_buffer_pool_size = 512M
innodb_log_file_size = 64M
innodb_lock_wait_timeout = 900
EOF
}

# SQL on stdin, as root (unix_socket authentication).
mariadb_root() {
    mariadb --no-defaults --socket="$MARIADB_SOCKET" --user=root --batch --skip-column-names
}

mariadb_alive() {
    mariadb-admin --no-defaults --socket="$MARIADB_SOCKET" --user=root --connect-timeout=2 ping >/dev/null 2>&1
}

start_mariadb() {
    log "mariadb: starting mariadbd (socket $MARIADB_SOCKET, 127.0.0.1:3306)"
    # mariadbd does not daemonize itself (mysqld_safe would, but it also
    # restarts the server behind our back): background it here, with every
    # descriptor away from our caller's.
    start_slurm_daemon /usr/sbin/mariadbd --defaults-file="$MARIADB_CONFIG" \
        </dev/null >/dev/null 2>&1 &
    wait_until 60 "mariadbd does not answer (see $MARIADB_LOG)" mariadb_alive
}

setup_mariadb() {
    install -d -m 0755 -o mysql -g root "$MARIADB_RUN"
    install -d -m 0750 -o mysql -g adm /var/log/mysql
    # The postinst initializes the data directory; do it if it is gone.
    if [[ ! -d $MARIADB_DATADIR/mysql ]]; then
        log "mariadb: initializing $MARIADB_DATADIR"
        install -d -m 0755 -o mysql -g mysql "$MARIADB_DATADIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$MARIADB_DATADIR" \
            --auth-root-authentication-method=socket --skip-test-db >"$TMP/mariadb-install.log" 2>&1 ||
            { cat "$TMP/mariadb-install.log" >&2; die "mariadb: mariadb-install-db failed"; }
    fi
    local changed=''
    write_mariadb_config >"$TMP/mariadb.cnf"
    install_if_changed "$TMP/mariadb.cnf" "$MARIADB_CONFIG" 0644 root:root && changed=1
    if running_from_pidfile "$MARIADB_PIDFILE" mariadbd; then
        if [[ -z $changed ]] && mariadb_alive; then
            log "mariadb: already running (pid $(pidfile_pid "$MARIADB_PIDFILE"))"
        else
            stop_pidfile mariadbd "$MARIADB_PIDFILE" mariadbd 30
            start_mariadb
        fi
    else
        rm -f "$MARIADB_PIDFILE"
        start_mariadb
    fi

    if [[ ! -s $SLURM_DB_PASSWORD_FILE ]]; then
        (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$SLURM_DB_PASSWORD_FILE")
        log "mariadb: generated a password for slurmdbd"
    fi
    chmod 0600 "$SLURM_DB_PASSWORD_FILE"
    SLURM_DB_PASSWORD=$(cat "$SLURM_DB_PASSWORD_FILE")
    # Idempotent, and keeps the account's password in step with the file.
    mariadb_root <<EOF || die "mariadb: cannot create $SLURM_DB and its user"
CREATE DATABASE IF NOT EXISTS $SLURM_DB;
CREATE USER IF NOT EXISTS '$SLURM_DB_USER'@'localhost' IDENTIFIED BY '$SLURM_DB_PASSWORD';
ALTER USER '$SLURM_DB_USER'@'localhost' IDENTIFIED BY '$SLURM_DB_PASSWORD';
GRANT ALL ON $SLURM_DB.* TO '$SLURM_DB_USER'@'localhost';
EOF
}

# ---------------------------------------------------------------- config files

write_slurmdbd_config() {
    cat <<EOF
# sheepdog testbed (written by testbed/up)
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=$SLURM_USER
DebugLevel=info
LogFile=$SLURM_LOG_DIR/slurmdbd.log
PidFile=$SLURMDBD_PIDFILE
StorageType=accounting_storage/mysql
# localhost: through the socket
StorageHost=localhost
StorageLoc=$SLURM_DB
StorageUser=$SLURM_DB_USER
StoragePass=$SLURM_DB_PASSWORD
EOF
}

write_slurm_config() {
    cat <<EOF
# sheepdog testbed: one node on loopback (written by testbed/up).
ClusterName=$SLURM_CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=$SLURM_USER
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true

SlurmctldPidFile=$SLURMCTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
StateSaveLocation=$SLURMCTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldLogFile=$SLURM_LOG_DIR/slurmctld.log
SlurmdLogFile=$SLURM_LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups here: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The machine has 2 cores; take the node's CPUs (and memory) from this file,
# as Grid Engine's 8 slots, rather than drain it for having fewer.
SlurmdParameters=config_overrides
# A node that was down (slurmd stopped) comes back as soon as it registers.
ReturnToService=2

# Schedule at once and often: the defaults (sched_interval=60, bf_interval=30)
# leave a trivial array waiting for seconds between waves.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=0,batch_sched_delay=0
# An epilog that does nothing, for speed: without one, slurmd answers the end
# of a job directly (no EPILOG_COMPLETE), and slurmctld reuses the freed CPU
# only at its next 1-s tick; 200 trivial tasks then take 9-11 s, not 4-5 s.
Epilog=/bin/true
# slurmctld forgets a finished job at least this long after it ended (60-120 s
# here): until then squeue -j prints nothing (exit 0), afterwards it fails
# with "Invalid job id specified" (exit 1).
MinJobAge=60
# Low on purpose (the default is 1001): array indices go up to 250 only, so
# the project's tests exercise splitting one request over several array jobs
# cheaply.
MaxArraySize=251

AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURMDBD_PORT
JobAcctGatherType=jobacct_gather/linux
# Sample each task's processes every second (default 30 s), so sacct has a
# MaxRSS (on the .batch step) for tasks that run a second or longer.
JobAcctGatherFrequency=task=1
# Finished jobs are in slurmdbd (sacct); no second record.
JobCompType=jobcomp/none

# RealMemory: 24 GiB, like Grid Engine's mem_grab capacity, so memory
# requests are schedulable (they are not enforced: no cgroups).
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=8 RealMemory=24576 State=UNKNOWN
PartitionName=$SLURM_PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

# ---------------------------------------------------------------- daemons

slurmdbd_running() { running_from_pidfile "$SLURMDBD_PIDFILE" slurmdbd; }
slurmctld_running() { running_from_pidfile "$SLURMCTLD_PIDFILE" slurmctld; }
slurmd_running() { running_from_pidfile "$SLURMD_PIDFILE" slurmd; }

slurmdbd_answers() { timeout 5 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
slurmctld_answers() { timeout 5 scontrol ping >/dev/null 2>&1; }

# The node's state, e.g. "idle", "mixed", "down*", "drained".
node_state() { timeout 5 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1; }
node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

start_slurmdbd() {
    if slurmdbd_running; then
        log "slurm: slurmdbd already running (pid $(pidfile_pid "$SLURMDBD_PIDFILE"))"
    else
        rm -f "$SLURMDBD_PIDFILE"
        log "slurm: starting slurmdbd"
        start_slurm_daemon /usr/sbin/slurmdbd
    fi
    # The first start creates the tables.
    wait_until 60 "slurmdbd does not answer (see $SLURM_LOG_DIR/slurmdbd.log)" slurmdbd_answers
}

# Associations are not enforced, but real clusters have them, and sacct's
# Account column is filled from them: the cluster, an account, and sgeuser
# in it (root is in the cluster's root account already).
register_cluster() {
    local assocs
    # One query (each sacctmgr call costs 0.1-0.5 s): "account|user" lines,
    # none if the cluster is not registered.
    assocs=$(sacctmgr -n -P list associations cluster="$SLURM_CLUSTER" format=account,user) ||
        die "slurm: sacctmgr cannot list associations"
    if [[ -z $assocs ]]; then
        log "slurm: registering cluster $SLURM_CLUSTER with slurmdbd"
        sacctmgr -i add cluster "$SLURM_CLUSTER" >/dev/null
    fi
    if ! grep -qx "$SLURM_ACCOUNT|" <<<"$assocs"; then
        log "slurm: adding account $SLURM_ACCOUNT"
        sacctmgr -i add account "$SLURM_ACCOUNT" Cluster="$SLURM_CLUSTER" \
            Description='sheepdog testbed' Organization=sheepdog >/dev/null
    fi
    if ! grep -qx "$SLURM_ACCOUNT|$SUBMIT_USER" <<<"$assocs"; then
        log "slurm: adding user $SUBMIT_USER to account $SLURM_ACCOUNT"
        sacctmgr -i add user "$SUBMIT_USER" Account="$SLURM_ACCOUNT" \
            DefaultAccount="$SLURM_ACCOUNT" Cluster="$SLURM_CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    if slurmctld_running; then
        log "slurm: slurmctld already running (pid $(pidfile_pid "$SLURMCTLD_PIDFILE"))"
    else
        rm -f "$SLURMCTLD_PIDFILE"
        log "slurm: starting slurmctld"
        start_slurm_daemon /usr/sbin/slurmctld
    fi
    wait_until 30 "slurmctld does not answer (see $SLURM_LOG_DIR/slurmctld.log)" slurmctld_answers
}

# When this run started slurmd (epoch seconds), if it did.
SLURMD_STARTED_AT=

start_slurmd() {
    if slurmd_running; then
        log "slurm: slurmd already running (pid $(pidfile_pid "$SLURMD_PIDFILE"))"
    else
        rm -f "$SLURMD_PIDFILE"
        log "slurm: starting slurmd"
        SLURMD_STARTED_AT=$(date +%s)
        start_slurm_daemon /usr/sbin/slurmd
    fi
}

# True once a slurmd started by this run has registered: slurmctld keeps the
# node's last state across its own restart ("idle" before any slurmd is back),
# but SlurmdStartTime changes only when a slurmd registers.
slurmd_registered() {
    [[ -z $SLURMD_STARTED_AT ]] && return 0
    local t
    t=$(timeout 5 scontrol show node "$HOST" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*') || return 1
    t=$(date -d "${t#*=}" +%s 2>/dev/null) || return 1
    ((t >= SLURMD_STARTED_AT))
}

wait_for_slurm_node() {
    local deadline=$((SECONDS + 60))
    until slurmd_registered && node_usable; do
        ((SECONDS < deadline)) ||
            die "slurm: node $HOST is '$(node_state)' after 60 s (see $SLURM_LOG_DIR/slurmd.log, slurmctld.log)"
        sleep 0.1
    done
    log "slurm: node $HOST is $(node_state)"
}

# Stop order: the node, the controller, then what they report to.
stop_slurm() {
    stop_pidfile slurmd "$SLURMD_PIDFILE" slurmd 20
    stop_pidfile slurmctld "$SLURMCTLD_PIDFILE" slurmctld 30
    stop_pidfile slurmdbd "$SLURMDBD_PIDFILE" slurmdbd 30
    stop_pidfile mariadbd "$MARIADB_PIDFILE" mariadbd 60
    stop_pidfile munged "$MUNGED_PIDFILE" munged 10
}

setup_slurm() {
    setup_munge
    setup_mariadb
    install -d -m 0755 -o "$SLURM_USER" -g "$SLURM_USER" "$SLURM_RUN" "$SLURM_LOG_DIR" "$SLURMCTLD_SPOOL"
    install -d -m 0755 -o root -g root "$SLURMD_SPOOL"

    local dbd_changed='' conf_changed=''
    (umask 077 && write_slurmdbd_config >"$TMP/slurmdbd.conf")
    install_if_changed "$TMP/slurmdbd.conf" "$SLURMDBD_CONF" 0600 "$SLURM_USER:$SLURM_USER" && dbd_changed=1
    write_slurm_config >"$TMP/slurm.conf"
    install_if_changed "$TMP/slurm.conf" "$SLURM_CONF" 0644 root:root && conf_changed=1

    # A changed file is read only at daemon start: restart what reads it.
    # Running jobs survive (their slurmstepd stays).
    if [[ -n $dbd_changed ]] && slurmdbd_running; then
        log "slurm: slurmdbd.conf changed, restarting slurmdbd"
        stop_pidfile slurmdbd "$SLURMDBD_PIDFILE" slurmdbd 30
    fi
    if [[ -n $conf_changed ]] && { slurmctld_running || slurmd_running; }; then
        log "slurm: slurm.conf changed, restarting slurmctld and slurmd"
        stop_pidfile slurmd "$SLURMD_PIDFILE" slurmd 20
        stop_pidfile slurmctld "$SLURMCTLD_PIDFILE" slurmctld 30
    fi

    start_slurmdbd
    register_cluster
    start_slurmctld
    start_slurmd
    wait_for_slurm_node
}

# ---------------------------------------------------------------- smoke test
# As the tests will: sgeuser over the testbed sshd with the client key and
# strict host key checking. In two steps, since accounting lands seconds after
# an array's tasks end (slurmctld sends their records from a thread that runs
# every ~5 s): `up` submits, does the Grid Engine checks meanwhile, then checks.

# ssh_submit_user SCRIPT [ARG...]: run SCRIPT with bash -s as sgeuser.
ssh_submit_user() {
    local script=$1
    shift
    timeout 120 ssh -F /dev/null -p "$SSH_PORT" -i "$CLIENT_KEY" -o IdentitiesOnly=yes \
        -o UserKnownHostsFile="$KNOWN_HOSTS" -o GlobalKnownHostsFile=/dev/null \
        -o StrictHostKeyChecking=yes -o BatchMode=yes "$SUBMIT_USER@127.0.0.1" \
        bash -s -- "$@" <"$script" 2>&1
}

# A 4-task array that writes, from both pythons jobs use, "<array job id> <uid>"
# to out.<task> in a fresh directory. Prints "<job id> <directory>".
slurm_smoke_submit_script() {
    cat <<'EOF'
set -euo pipefail
dir=$(mktemp -d /tmp/sheepdog-testbed-slurm.XXXXXX)
jid=$(sbatch --parsable --array=1-4 --job-name=testbed-smoke --chdir="$dir" \
    --output=/dev/null --error=/dev/null \
    --wrap='/opt/sheepdog-node/bin/python -c "import sheepdog" && /usr/bin/python3 -c "import os; print(os.environ[\"SLURM_ARRAY_JOB_ID\"], os.getuid())" >"out.$SLURM_ARRAY_TASK_ID"')
echo "$jid $dir"
EOF
}

# Args: job id, directory. Polls squeue every 0.2 s until the job is gone,
# checks the files, then retries sacct (as sgeuser) until all four tasks are
# COMPLETED there.
slurm_smoke_check_script() {
    cat <<'EOF'
set -euo pipefail
jid=$1 dir=$2
t0=$(date +%s%N)
for ((i = 0; ; i++)); do
    if out=$(squeue -h -j "$jid" -o %i 2>&1); then
        [[ -n $out ]] || break
    else
        [[ $out == *"Invalid job id"* ]] && break
    fi
    ((i < 300)) || { echo "job $jid still in squeue after 60 s: $out"; exit 1; }
    sleep 0.2
done
for t in 1 2 3 4; do
    [[ $(cat "$dir/out.$t" 2>/dev/null) == "$jid $(id -u)" ]] ||
        { echo "task $t: no or wrong output in $dir"; ls -l "$dir"; exit 1; }
done
rm -rf "$dir"
for ((i = 0; ; i++)); do
    acct=$(sacct -j "$jid" -n -P -o JobID,State,ExitCode 2>&1) || true
    n=$(grep -cE "^${jid}_[1-4]\|COMPLETED\|0:0$" <<<"$acct" || true)
    ((n == 4)) && break
    ((i < 100)) || { echo "sacct -j $jid after 20 s:"; echo "$acct"; exit 1; }
    sleep 0.2
done
echo "job $jid ran, its 4 tasks COMPLETED in sacct $((($(date +%s%N) - t0) / 1000000)) ms after the check began"
EOF
}

SLURM_SMOKE_JOB=
SLURM_SMOKE_DIR=

slurm_smoke_submit() {
    local out
    slurm_smoke_submit_script >"$TMP/slurm-smoke-submit.sh"
    out=$(ssh_submit_user "$TMP/slurm-smoke-submit.sh") ||
        die "slurm smoke: sbatch over ssh failed: $(echo "$out" | tr '\n' ' ')"
    read -r SLURM_SMOKE_JOB SLURM_SMOKE_DIR <<<"$out"
    [[ $SLURM_SMOKE_JOB =~ ^[0-9]+$ && -n $SLURM_SMOKE_DIR ]] ||
        die "slurm smoke: unexpected sbatch output: $out"
    log "slurm smoke: submitted array job $SLURM_SMOKE_JOB over ssh as $SUBMIT_USER"
}

slurm_smoke_check() {
    local out
    slurm_smoke_check_script >"$TMP/slurm-smoke-check.sh"
    out=$(ssh_submit_user "$TMP/slurm-smoke-check.sh" "$SLURM_SMOKE_JOB" "$SLURM_SMOKE_DIR") ||
        die "slurm smoke: $(echo "$out" | tr '\n' ' ')"
    log "slurm smoke: $out"
}
