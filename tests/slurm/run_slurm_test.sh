#!/usr/bin/env bash
# The workflow on a real SLURM. Starts a one-node cluster on localhost from Debian 12's packages (slurmctld,
# slurmd, slurmdbd with a throwaway MariaDB for accounting, munge), runs the smoke configuration twice, once
# locally and once through `--profile workflow/profiles/slurm`, checks that the SLURM run's jobs went
# through sbatch (sacct lists them, all COMPLETED) and that both runs wrote byte-identical files, then shuts
# the cluster down.
#
#   tests/slurm/run_slurm_test.sh        # as root; or `make test-slurm`
#
# Environment (all optional):
#   SLURM_TEST_PYTHON        python with snakemake, the SLURM plugin and circuit_reuse
#                            (default: the repository's .venv/bin/python, else python3)
#   CIRCUIT_REUSE_TOKENIZER  GPT-2 tokenizer directory (default: ../shared/gpt2/tokenizer beside the repo)
#   SLURM_TEST_TIMEOUT       overall limit in seconds (default 3000), a backstop; the script stops itself
#                            after it. The SLURM run itself gets a limit scaled from the local run's
#                            measured time (SLURM_TEST_FACTOR times it plus SLURM_TEST_SLACK seconds;
#                            defaults 3 and 300), so a busy machine, slow for both runs, is not a failure
#   SLURM_TEST_FACTOR, SLURM_TEST_SLACK  see above
#   SLURM_TEST_KEEP=1        keep the run directory (configs, daemon logs, both runs) for inspection,
#                            until the next run of the test removes it
#
# Everything lives in a fresh directory under ${TMPDIR:-/tmp}/circuit-reuse-slurm-test/ with its own ports
# and munge socket; no system-wide SLURM, munge or MariaDB configuration is read or changed. On exit, in
# every case, jobs are cancelled, the daemons stopped and the directory removed; a run that was killed
# outright is cleaned up by the next one.
set -Eeuo pipefail

TIMEOUT=${SLURM_TEST_TIMEOUT:-3000}
FACTOR=${SLURM_TEST_FACTOR:-3}
SLACK=${SLURM_TEST_SLACK:-300}
if [[ -z ${SLURM_TEST_UNDER_TIMEOUT:-} ]]; then
    # Re-run under timeout(1): on expiry it sends TERM to this script's process group, the EXIT trap below
    # cleans up, and KILL follows two minutes later if that hangs (the next run then cleans up).
    export SLURM_TEST_UNDER_TIMEOUT=1
    status=0
    timeout --kill-after=120 "$TIMEOUT" "$0" "$@" || status=$?
    if [[ $status -eq 124 || $status -eq 137 ]]; then
        echo "slurm test: FAILED, timed out after ${TIMEOUT}s (SLURM_TEST_TIMEOUT)" >&2
    fi
    exit "$status"
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BASE=${TMPDIR:-/tmp}/circuit-reuse-slurm-test
CLUSTER=circuitreuse
# shellcheck disable=SC2034 # render() reads it as ${!name}
PARTITION=debug
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
COMMANDS=(slurmctld slurmd slurmdbd sbatch sacct sacctmgr sinfo squeue scancel munged mungekey munge unmunge
    mariadbd mariadb-install-db mariadb mariadb-admin)
STARTED=$(date +%s)

RUN=""
DAEMONS=()          # names, in start order
declare -A PID=()   # name -> pid
POLICY_GUARD=""     # set when this script created /usr/sbin/policy-rc.d

say() { printf '[slurm test %4ds] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
die() {
    printf 'slurm test: FAILED: %s\n' "$*" >&2
    exit 1
}

# Run a command, or a function of this script, stopping a command that hangs after 20 seconds.
bounded() {
    if declare -F "$1" >/dev/null; then "$@"; else timeout 20 "$@"; fi
}

# wait_for SECONDS WHAT COMMAND...: retry COMMAND every second until it succeeds, failing when SECONDS
# have passed or when one of the daemons started so far has exited.
wait_for() {
    local limit=$1 what=$2 deadline=$((SECONDS + $1)) name
    shift 2
    until bounded "$@" >/dev/null 2>&1; do
        for name in "${DAEMONS[@]}"; do
            kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited while waiting for $what (see its log below)"
        done
        ((SECONDS < deadline)) || die "$what did not come up within ${limit}s"
        sleep 1
    done
}

# The start time of a process (clock ticks since boot): with its pid, it names the process uniquely.
start_time_of() { sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

# The processes of a run: those with its marker in their environment (everything started from this
# script, the jobs included) and those holding a file in its directory open (slurmstepd, which slurmd
# starts with an environment of its own). All of them were started by this test, none by anyone else.
processes_of_run() {
    local run=$1 env pid
    for env in /proc/[0-9]*/environ; do
        pid=${env#/proc/}
        pid=${pid%/environ}
        if grep -qzxF -- "CIRCUIT_REUSE_SLURM_TEST_RUN=$run" "$env" 2>/dev/null; then echo "$pid"; fi
    done
    find /proc/[0-9]*/fd -maxdepth 1 -lname "$run/*" 2>/dev/null | cut -d/ -f3
    find /proc/[0-9]*/cwd -maxdepth 0 -lname "$run*" 2>/dev/null | cut -d/ -f3
}

# End every process of a run: TERM first, then KILL whatever is left after 10 seconds.
end_processes_of_run() {
    local run=$1 signal pid found waited alive
    for signal in TERM KILL; do
        found=()
        while read -r pid; do
            [[ $pid == "$$" ]] || found+=("$pid")
        done < <(processes_of_run "$run" | sort -un)
        ((${#found[@]})) || return 0
        say "ending ${#found[@]} leftover process(es) of $run with SIG$signal: ${found[*]}"
        kill "-$signal" "${found[@]}" 2>/dev/null || true
        for ((waited = 0; waited < 10; waited++)); do
            alive=0
            for pid in "${found[@]}"; do [[ -e /proc/$pid ]] && alive=1; done
            ((alive)) || return 0
            sleep 1
        done
    done
}

# Runs killed outright (SIGKILL, a reboot) leave their directory behind, perhaps with daemons: their
# owner file names the script's pid and start time, so a directory whose owner is gone is stale.
clean_stale_runs() {
    local old owner_pid owner_start
    for old in "$BASE"/run.*; do
        [[ -d $old ]] || continue
        read -r owner_pid owner_start <"$old/owner" 2>/dev/null || true
        if [[ -n ${owner_pid:-} && $(start_time_of "$owner_pid") == "${owner_start:-}" ]]; then
            continue # another test is running right now
        fi
        say "cleaning up $old, left by an earlier run"
        end_processes_of_run "$old"
        rm -rf "$old"
    done
}

stop_daemon() {
    local name=$1 pid=${PID[$1]:-} waited
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((waited = 0; waited < 15; waited++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "PID[$name]"
}

print_logs() {
    local file
    echo "---- logs (last 40 lines each) ----" >&2
    while IFS= read -r -d '' file; do
        echo "==== $file" >&2
        tail -n 40 "$file" >&2 || true
    done < <(find "$RUN/log" "$RUN/runs" -type f \( -path "$RUN/log/*" -o -path '*/slurm_logs/*' \
        -o -path "$RUN/runs/*/logs/*" \) -print0 2>/dev/null | sort -z)
}

cleanup() {
    local status=$? i
    set +e
    trap - EXIT INT TERM
    if [[ -n $RUN && -d $RUN ]]; then
        ((status == 0)) || print_logs
        if [[ -n ${PID[slurmctld]:-} ]] && kill -0 "${PID[slurmctld]}" 2>/dev/null; then
            scancel --quiet --user=root >/dev/null 2>&1
            for ((i = 0; i < 20; i++)); do
                [[ -n $(squeue --noheader --format=%i 2>/dev/null) ]] || break
                sleep 1
            done
        fi
        for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
            stop_daemon "${DAEMONS[i]}"
        done
        end_processes_of_run "$RUN"
        if [[ ${SLURM_TEST_KEEP:-} == 1 ]]; then
            say "kept $RUN (SLURM_TEST_KEEP=1)"
        else
            rm -rf "$RUN"
        fi
        rmdir "$BASE" 2>/dev/null
    fi
    [[ -n $POLICY_GUARD ]] && rm -f /usr/sbin/policy-rc.d
    if ((status == 0)); then
        say "cluster shut down; PASSED"
    else
        say "cluster shut down; FAILED (exit status $status)"
    fi
    exit "$status"
}

install_packages() {
    local missing=() cmd
    for cmd in "${COMMANDS[@]}"; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    # Keep the packages' init scripts from starting system-wide daemons: this test starts its own.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_GUARD=1
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$RUN/log/apt.log" 2>&1; then
        apt-get update -q >>"$RUN/log/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$RUN/log/apt.log" 2>&1 ||
            die "apt-get install ${PACKAGES[*]} failed; see $RUN/log/apt.log"
    fi
    if [[ -n $POLICY_GUARD ]]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_GUARD=""
    fi
    for cmd in "${missing[@]}"; do
        command -v "$cmd" >/dev/null || die "$cmd is still missing after installing ${PACKAGES[*]}"
    done
}

# Four free TCP ports outside the kernel's ephemeral range, so no outgoing connection takes one of them
# between this check and the daemons binding it.
pick_ports() {
    "$PY" - <<'EOF'
import random
import socket

low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
candidates = [port for port in range(10000, 40000) if not low <= port <= high]
random.shuffle(candidates)
ports = []
for port in candidates:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    ports.append(port)
    if len(ports) == 4:
        break
print(*ports)
EOF
}

# render TEMPLATE OUTPUT: fill in the @NAME@ placeholders from the variables of the same names.
render() {
    local text name
    text=$(<"$1")
    for name in RUN CLUSTER PARTITION NODE NODE_LINE SLURMCTLD_PORT SLURMD_PORT SLURMDBD_PORT MARIADB_PORT \
        DB_PASSWORD; do
        text=${text//@$name@/${!name}}
    done
    [[ $text != *@[A-Z_]*@* ]] || die "unfilled placeholder in $1"
    printf '%s\n' "$text" >"$2"
}

# start_daemon NAME COMMAND...: run a daemon in the foreground of a background job, output to its log, in
# a session of its own: a signal to this script's process group (the timeout's TERM, a Ctrl-C) reaches the
# runs and jobs, while the daemons stay up for cleanup to cancel the jobs and stop them in order.
start_daemon() {
    local name=$1
    shift
    setsid "${MARK[@]}" "$@" >"$RUN/log/$name.out" 2>&1 &
    PID[$name]=$!
    DAEMONS+=("$name")
}

# run_logged LOG COMMAND...: run a command with its output in LOG. It runs in the background while the
# script waits for it, because bash runs a signal's trap during `wait` at once but only after a foreground
# command has finished, and the timeout's cleanup must not wait for a run that hangs.
run_logged() {
    local log=$1 pid status=0
    shift
    "${MARK[@]}" "$@" >"$log" 2>&1 &
    pid=$!
    wait "$pid" || status=$?
    return "$status"
}

# ------------------------------------------------------------------------------------------------------
[[ $EUID -eq 0 ]] || die "run as root: the test installs packages and runs the SLURM daemons as root"
grep -qs '^12' /etc/debian_version || say "warning: written for Debian 12; this is not Debian 12"

PY=${SLURM_TEST_PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python; else PY=$(command -v python3); fi
fi
"$PY" -c "import snakemake, snakemake_executor_plugin_slurm, circuit_reuse" 2>/dev/null ||
    die "$PY lacks snakemake, snakemake-executor-plugin-slurm or circuit_reuse (set SLURM_TEST_PYTHON)"
TOKENIZER=${CIRCUIT_REUSE_TOKENIZER:-$REPO/../shared/gpt2/tokenizer}
[[ -f $TOKENIZER/vocab.json ]] ||
    die "no GPT-2 tokenizer at $TOKENIZER: set CIRCUIT_REUSE_TOKENIZER (the smoke models need it)"
export CIRCUIT_REUSE_TOKENIZER=$TOKENIZER

mkdir -p "$BASE"
clean_stale_runs
RUN=$(mktemp -d "$BASE/run.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT
trap 'say "received SIGTERM"; exit 143' TERM
echo "$$ $(start_time_of $$)" >"$RUN/owner"
mkdir -p "$RUN"/{etc,log,pid,state,spool,munge,mariadb,runs}
# munged insists that everyone may traverse its socket's directory; the key file itself is 0600.
chmod 755 "$RUN" "$RUN/munge"
# Daemons and runs get the run's marker in their environment, and their children (the jobs) inherit it:
# that is how cleanup, here or in the next run, finds what is left of this one.
MARK=(env "CIRCUIT_REUSE_SLURM_TEST_RUN=$RUN")
export SLURM_CONF=$RUN/etc/slurm.conf
say "run directory $RUN; python $PY"

install_packages

read -r SLURMCTLD_PORT SLURMD_PORT SLURMDBD_PORT MARIADB_PORT < <(pick_ports)
[[ -n ${MARIADB_PORT:-} ]] || die "could not find four free TCP ports"
NODE=$(hostname -s)
# The node as slurmd sees the machine: real CPUs, sockets, cores and memory.
NODE_LINE="$(slurmd -C | head -n 1 | sed -E "s/^NodeName=[^ ]+/NodeName=$NODE NodeAddr=127.0.0.1/") State=UNKNOWN"
DB_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
render "$HERE/slurm.conf.in" "$RUN/etc/slurm.conf"
render "$HERE/slurmdbd.conf.in" "$RUN/etc/slurmdbd.conf"
chmod 600 "$RUN/etc/slurmdbd.conf"
say "node: $NODE_LINE"
say "ports: slurmctld $SLURMCTLD_PORT, slurmd $SLURMD_PORT, slurmdbd $SLURMDBD_PORT, mariadb $MARIADB_PORT"

# munge: the authentication every SLURM daemon and command uses, with a key of this run's own.
mungekey --create --keyfile="$RUN/munge/munge.key"
start_daemon munged munged --foreground --key-file="$RUN/munge/munge.key" --socket="$RUN/munge/munge.socket" \
    --pid-file="$RUN/pid/munged.pid" --log-file="$RUN/log/munged.log" --seed-file="$RUN/munge/munged.seed"
wait_for 30 munged test -S "$RUN/munge/munge.socket"
munge --socket="$RUN/munge/munge.socket" -n | unmunge --socket="$RUN/munge/munge.socket" >/dev/null ||
    die "munge cannot decode its own credential"
say "munged is up"

# MariaDB for slurmdbd: sacct, which the executor plugin polls for job states, reads from slurmdbd.
"$(command -v mariadb-install-db)" --no-defaults --user=root --datadir="$RUN/mariadb/data" --skip-test-db \
    --auth-root-authentication-method=socket >"$RUN/log/mariadb-install-db.log" 2>&1 ||
    die "mariadb-install-db failed"
start_daemon mariadb mariadbd --no-defaults --user=root --datadir="$RUN/mariadb/data" \
    --socket="$RUN/mariadb/mariadb.sock" --port="$MARIADB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$RUN/pid/mariadb.pid" --log-error="$RUN/log/mariadb.log" \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
DB=(mariadb --no-defaults --socket="$RUN/mariadb/mariadb.sock" --user=root)
wait_for 60 MariaDB mariadb-admin --no-defaults --socket="$RUN/mariadb/mariadb.sock" --user=root ping
"${DB[@]}" -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
say "MariaDB is up"

start_daemon slurmdbd slurmdbd -D
wait_for 60 slurmdbd sacctmgr --noheader list cluster
# Registering the cluster also gives root an association (account root) to run jobs under.
sacctmgr --immediate add cluster "$CLUSTER" >/dev/null
say "slurmdbd is up; cluster $CLUSTER registered"

start_daemon slurmctld slurmctld -D
wait_for 60 slurmctld scontrol ping
start_daemon slurmd slurmd -D -N "$NODE"
node_idle() { [[ $(sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null) == idle ]]; }
wait_for 90 "node $NODE (idle in sinfo)" node_idle
say "cluster is up:"
sinfo --Node --long

# ------------------------------------------------------------------------------------------------------
# The smoke configuration twice: locally, then through the SLURM profile. Neither run has HF_HUB_OFFLINE
# from outside: the model jobs set it themselves (their records say so). Only its GPT-2 models: the other
# families' stand-ins run the same job scripts (the end-to-end test covers them) and would double the time.
SMOKE_CONFIG=$RUN/smoke-gpt2.yaml
"$PY" - "$REPO/workflow/configs/smoke.yaml" "$SMOKE_CONFIG" <<'PYTHON'
import sys

import yaml

config = yaml.safe_load(open(sys.argv[1]))
config["models"] = {
    name: entry for name, entry in config["models"].items() if entry.get("architecture", "").startswith("gpt2")
}
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
PYTHON
SNAKEMAKE=(env -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE "$PY" -m snakemake
    --snakefile "$REPO/workflow/Snakefile" --configfile "$SMOKE_CONFIG")
LOCAL=$RUN/runs/local
ON_SLURM=$RUN/runs/slurm

say "local run: snakemake --cores 2 --directory $LOCAL"
LOCAL_STARTED=$(date +%s)
run_logged "$RUN/log/local-run.log" "${SNAKEMAKE[@]}" --cores 2 --directory "$LOCAL" ||
    die "the local run failed; see the end of $RUN/log/local-run.log below"
LOCAL_SECONDS=$(($(date +%s) - LOCAL_STARTED))
# The same jobs through SLURM also pay sbatch, the plugin's status checks and srun for each: on a quiet
# 2-core machine the SLURM run took about twice the local run (5 of 2.5 minutes). A machine busy with other
# work slows both runs alike, so the SLURM run's limit is measured in local runs, not fixed.
SLURM_LIMIT=$((FACTOR * LOCAL_SECONDS + SLACK))
say "the local run took ${LOCAL_SECONDS}s; the SLURM run may take ${SLURM_LIMIT}s (${FACTOR} x that + ${SLACK}s)"

# Inside each job the plugin's jobstep executor starts the rule with srun, after removing every SLURM_*
# variable, SLURM_CONF included. A real cluster's srun then finds /etc/slurm/slurm.conf (or the slurmd's
# configless cache); this cluster's configuration lives in the run directory, so srun comes through a
# two-line wrapper that names it.
mkdir -p "$RUN/bin"
printf '#!/bin/sh\nSLURM_CONF=%q exec %q "$@"\n' "$SLURM_CONF" "$(command -v srun)" >"$RUN/bin/srun"
chmod 755 "$RUN/bin/srun"

# The profile as users get it; only the first status check comes sooner (the plugin waits 40s by default).
say "SLURM run: snakemake --profile workflow/profiles/slurm --directory $ON_SLURM"
status=0
PATH=$RUN/bin:$PATH run_logged "$RUN/log/slurm-run.log" timeout --kill-after=60 "$SLURM_LIMIT" \
    "${SNAKEMAKE[@]}" --profile "$REPO/workflow/profiles/slurm" \
    --directory "$ON_SLURM" --slurm-init-seconds-before-status-checks 5 --slurm-keep-successful-logs || status=$?
if [[ $status -eq 124 || $status -eq 137 ]]; then
    die "the SLURM run took over ${SLURM_LIMIT}s (${FACTOR} x the local run's ${LOCAL_SECONDS}s + ${SLACK}s); see the end of $RUN/log/slurm-run.log below"
fi
((status == 0)) || die "the SLURM run failed; see the end of $RUN/log/slurm-run.log below"

say "checking the SLURM run against sacct and the local run"
"$PY" "$HERE/verify_slurm_run.py" --snakemake-log "$RUN/log/slurm-run.log" --local "$LOCAL" --slurm "$ON_SLURM" \
    --since "$(date -d "@$STARTED" +%Y-%m-%dT%H:%M:%S)"
