#!/usr/bin/env bash
# A team MLflow tracking server for vit-exp: `mlflow server` on a PostgreSQL backend store, with
# artifacts proxied by the server (clients need only the http:// URI, no access to the files).
# Run `deploy/tracking_server.sh -h` for the usage.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<EOF
Usage: deploy/tracking_server.sh [start] [options] [-- extra mlflow server options]
       deploy/tracking_server.sh stop|status [options]

Runs a PostgreSQL cluster of its own (created on first use in DATA_DIR, listening on 127.0.0.1
only, its socket inside DATA_DIR) and \`mlflow server\` on it, artifacts proxied into
DATA_DIR/artifacts. The database role's password is generated once into DATA_DIR/db-password
(mode 0600) and only ever printed masked.

Commands:
  start          (default) start PostgreSQL, then mlflow server in the foreground: Ctrl-C stops
                 both. With --background: return once the server answers GET /health.
  stop           stop a --background server and its PostgreSQL.
  status         say what runs.

Options (each also an environment variable):
  --data-dir DIR      DATA_DIR     data folder              (default: <repo>/.tracking-server)
  --host HOST         HOST         mlflow server's address  (default: 127.0.0.1; 0.0.0.0 = all)
  --port PORT         MLFLOW_PORT  mlflow server's port     (default: 5000)
  --pg-port PORT      PG_PORT      PostgreSQL's port        (default: 5433: 5432 is left to a
                                                             system PostgreSQL)
  --workers N         WORKERS      mlflow server workers    (default: 4)
  --background                     start in the background (pid files in DATA_DIR)
  --install                        if PostgreSQL is missing: apt-get install -y postgresql (root)
  -h, --help                       this text
  Other environment variables: MLFLOW (the mlflow executable; default <repo>/.venv/bin/mlflow),
  PG_BIN (folder of pg_ctl/initdb; default: newest /usr/lib/postgresql/*/bin), DB_DRIVER
  (psycopg2 (default) or psycopg), DB_NAME / DB_USER (default: mlflow), PG_OS_USER (the system
  user PostgreSQL runs as when this script runs as root; default: postgres),
  START_TIMEOUT (seconds to wait for /health with --background; default: 180).

Examples:
  deploy/tracking_server.sh                             # foreground, http://127.0.0.1:5000
  deploy/tracking_server.sh --background --port 5001    # then: deploy/tracking_server.sh stop
  HOST=0.0.0.0 deploy/tracking_server.sh -- --allowed-hosts 'mlflow.lab.example,10.0.0.*'

Clients: MLFLOW_TRACKING_URI=http://<host>:<port>  (or mlflow.tracking_uri=http://<host>:<port>)
Needs the PostgreSQL driver in mlflow's environment: .venv/bin/pip install -e ".[postgres]"
EOF
}

die() { echo "error: $*" >&2; exit 1; }
say() { echo "tracking_server: $*"; }

# ---------------------------------------------------------------- arguments
COMMAND=start
BACKGROUND=0
INSTALL=0
EXTRA_ARGS=()
if [[ $# -gt 0 && "$1" =~ ^(start|stop|status)$ ]]; then
    COMMAND=$1
    shift
fi
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --data-dir) DATA_DIR=${2:?--data-dir needs a value}; shift 2 ;;
        --host) HOST=${2:?--host needs a value}; shift 2 ;;
        --port) MLFLOW_PORT=${2:?--port needs a value}; shift 2 ;;
        --pg-port) PG_PORT=${2:?--pg-port needs a value}; shift 2 ;;
        --workers) WORKERS=${2:?--workers needs a value}; shift 2 ;;
        --background) BACKGROUND=1; shift ;;
        --install) INSTALL=1; shift ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

DATA_DIR=${DATA_DIR:-$REPO_ROOT/.tracking-server}
HOST=${HOST:-127.0.0.1}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
PG_PORT=${PG_PORT:-5433}
WORKERS=${WORKERS:-4}
DB_DRIVER=${DB_DRIVER:-psycopg2}
DB_NAME=${DB_NAME:-mlflow}
DB_USER=${DB_USER:-mlflow}
PG_OS_USER=${PG_OS_USER:-postgres}
START_TIMEOUT=${START_TIMEOUT:-180}
if [[ -z "${MLFLOW:-}" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/mlflow" ]]; then
        MLFLOW="$REPO_ROOT/.venv/bin/mlflow"
    else
        MLFLOW=$(command -v mlflow || true)
    fi
fi

for value in "$MLFLOW_PORT" "$PG_PORT" "$WORKERS" "$START_TIMEOUT"; do
    [[ "$value" =~ ^[0-9]+$ ]] || die "ports, WORKERS and START_TIMEOUT must be numbers, got '$value'"
done
for value in "$DB_NAME" "$DB_USER"; do
    [[ "$value" =~ ^[a-z_][a-z0-9_]*$ ]] || die "DB_NAME and DB_USER must be lower-case identifiers, got '$value'"
done
[[ "$DB_DRIVER" =~ ^(psycopg2|psycopg)$ ]] || die "DB_DRIVER must be psycopg2 or psycopg, got '$DB_DRIVER'"

DATA_DIR=$(realpath -m -- "$DATA_DIR")
PGDATA_DIR="$DATA_DIR/pgdata"        # the cluster (owned by the PostgreSQL user, mode 0700)
PGRUN_DIR="$DATA_DIR/pgrun"          # its unix socket and log (same owner)
ARTIFACTS_DIR="$DATA_DIR/artifacts"  # proxied artifacts (written by mlflow server)
PASSWORD_FILE="$DATA_DIR/db-password"
MLFLOW_PID_FILE="$DATA_DIR/mlflow.pid"
PG_PID_FILE="$DATA_DIR/postgres.pid"
MLFLOW_LOG="$DATA_DIR/mlflow.log"
PG_LOG="$PGRUN_DIR/postgres.log"

# ---------------------------------------------------------------- PostgreSQL binaries and user
find_pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        [[ -x "$PG_BIN/pg_ctl" && -x "$PG_BIN/initdb" ]] && echo "$PG_BIN"
        return 0
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$dir" && -x "$dir/pg_ctl" && -x "$dir/initdb" ]]; then
        echo "$dir"
    elif command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
        dirname "$(command -v initdb)"
    fi
}

PG_BIN_DIR=$(find_pg_bin)
if [[ -z "$PG_BIN_DIR" && "$COMMAND" == start && "$INSTALL" == 1 ]]; then
    [[ $EUID -eq 0 ]] || die "--install needs root (or run: sudo apt-get install -y postgresql)"
    say "installing PostgreSQL: apt-get install -y postgresql"
    apt-get install -y postgresql || { apt-get update && apt-get install -y postgresql; }
    PG_BIN_DIR=$(find_pg_bin)
fi
if [[ -z "$PG_BIN_DIR" ]]; then
    echo "error: PostgreSQL is not installed (no pg_ctl/initdb in ${PG_BIN:-/usr/lib/postgresql/*/bin or on PATH})." >&2
    echo "Install it with:  sudo apt-get install -y postgresql   (or run this script with --install as root)" >&2
    exit 1
fi

if [[ $EUID -eq 0 ]]; then
    # PostgreSQL refuses to run as root: run it as the PostgreSQL system user.
    id "$PG_OS_USER" >/dev/null 2>&1 || die "running as root, but there is no '$PG_OS_USER' system user to run PostgreSQL as (set PG_OS_USER)"
    PG_SUPERUSER=$PG_OS_USER
    as_pg() { (cd / && runuser -u "$PG_OS_USER" -- "$@"); }
else
    PG_SUPERUSER=$(id -un)
    as_pg() { "$@"; }
fi

pg_running() { as_pg "$PG_BIN_DIR/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; }
pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
mlflow_pid() { [[ -f "$MLFLOW_PID_FILE" ]] && cat "$MLFLOW_PID_FILE" || true; }

stop_mlflow() {  # TERM the server's process group (server, uvicorn workers, job runner); KILL after 20 s
    local pid=$1 i
    pid_alive "$pid" || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # let the workers of the group go as well
    for ((i = 0; i < 50; i++)); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
}

stop_postgres() {
    if [[ -f "$PGDATA_DIR/PG_VERSION" ]] && pg_running; then
        as_pg "$PG_BIN_DIR/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null
        say "PostgreSQL stopped"
    fi
    rm -f "$PG_PID_FILE"
}

# ---------------------------------------------------------------- stop / status
if [[ "$COMMAND" == stop ]]; then
    pid=$(mlflow_pid)
    if pid_alive "$pid"; then
        stop_mlflow "$pid"
        say "mlflow server (pid $pid) stopped"
    fi
    rm -f "$MLFLOW_PID_FILE"
    stop_postgres
    exit 0
fi

if [[ "$COMMAND" == status ]]; then
    pid=$(mlflow_pid)
    if pid_alive "$pid"; then say "mlflow server running (pid $pid)"; else say "mlflow server not running"; fi
    if [[ -f "$PGDATA_DIR/PG_VERSION" ]] && pg_running; then
        say "PostgreSQL running ($PGDATA_DIR)"
    else
        say "PostgreSQL not running"
    fi
    exit 0
fi

# ---------------------------------------------------------------- start: checks
[[ -n "$MLFLOW" && -x "$MLFLOW" ]] || die "no mlflow executable (looked for $REPO_ROOT/.venv/bin/mlflow and mlflow on PATH; set MLFLOW=...)"
MLFLOW_PYTHON="$(dirname "$MLFLOW")/python"
if [[ -x "$MLFLOW_PYTHON" ]] && ! "$MLFLOW_PYTHON" -c "import $DB_DRIVER" 2>/dev/null; then
    die "the PostgreSQL driver '$DB_DRIVER' is not installed beside $MLFLOW; install it with: $(dirname "$MLFLOW")/pip install -e \"$REPO_ROOT[postgres]\""
fi
pid=$(mlflow_pid)
if pid_alive "$pid"; then
    say "mlflow server already running (pid $pid); stop it with: $0 stop --data-dir $DATA_DIR"
    exit 0
fi
SOCKET_PATH="$PGRUN_DIR/.s.PGSQL.$PG_PORT"
((${#SOCKET_PATH} <= 100)) || die "DATA_DIR is too long for a unix socket path ($SOCKET_PATH); choose a shorter DATA_DIR"

# ---------------------------------------------------------------- start: folders
USER_UMASK=$(umask)
umask 077
mkdir -p "$DATA_DIR"
mkdir -p "$ARTIFACTS_DIR" "$PGDATA_DIR" "$PGRUN_DIR"
chmod 0755 "$DATA_DIR" "$ARTIFACTS_DIR"
chmod 0700 "$PGDATA_DIR" "$PGRUN_DIR"
[[ -f "$DATA_DIR/.gitignore" ]] || echo '*' >"$DATA_DIR/.gitignore"  # never committed by accident
if [[ $EUID -eq 0 ]]; then
    chown "$PG_OS_USER": "$PGDATA_DIR" "$PGRUN_DIR"
    as_pg test -x "$PGDATA_DIR" ||
        die "the '$PG_OS_USER' user cannot reach $PGDATA_DIR (a parent folder is not searchable by others, e.g. mode 0700); choose another DATA_DIR"
fi

# ---------------------------------------------------------------- start: PostgreSQL
if [[ ! -f "$PGDATA_DIR/PG_VERSION" ]]; then
    say "creating a PostgreSQL cluster in $PGDATA_DIR ($("$PG_BIN_DIR/postgres" --version))"
    as_pg "$PG_BIN_DIR/initdb" -D "$PGDATA_DIR" -U "$PG_SUPERUSER" --auth-local=peer \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C >"$PGRUN_DIR/initdb.log" 2>&1 ||
        { cat "$PGRUN_DIR/initdb.log" >&2; die "initdb failed"; }
    echo "include_if_exists = 'tracking_server.conf'" | as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null
fi
# rewritten at every start, so PG_PORT can change between starts
as_pg tee "$PGDATA_DIR/tracking_server.conf" >/dev/null <<EOF
# written by deploy/tracking_server.sh at every start
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGRUN_DIR'
unix_socket_permissions = 0700
EOF

STARTED_PG=0
if ! pg_running; then
    as_pg "$PG_BIN_DIR/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 start >/dev/null ||
        { tail -n 20 "$PG_LOG" >&2 || true; die "PostgreSQL did not start (port $PG_PORT in use?); log: $PG_LOG"; }
    STARTED_PG=1
fi
head -n 1 "$PGDATA_DIR/postmaster.pid" >"$PG_PID_FILE"
chmod 0644 "$PG_PID_FILE"
say "PostgreSQL $(basename "$(dirname "$PG_BIN_DIR")") on 127.0.0.1:$PG_PORT (pid $(cat "$PG_PID_FILE"), data $PGDATA_DIR)"

cleanup_pg_on_failure() { if [[ $STARTED_PG == 1 ]]; then stop_postgres; fi; }

# the role's password: generated once, kept in a 0600 file, given to psql on stdin (never in argv)
if [[ ! -s "$PASSWORD_FILE" ]]; then
    (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$PASSWORD_FILE")
fi
chmod 0600 "$PASSWORD_FILE"
DB_PASSWORD=$(<"$PASSWORD_FILE")
umask "$USER_UMASK"
if ! as_pg "$PG_BIN_DIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGRUN_DIR" -p "$PG_PORT" -U "$PG_SUPERUSER" \
    -d postgres -v role="$DB_USER" -v db="$DB_NAME" >/dev/null <<EOF
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
\set pw '$DB_PASSWORD'
ALTER ROLE :"role" WITH LOGIN PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L', :'db', :'role', 'UTF8') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
EOF
then
    cleanup_pg_on_failure
    die "could not create the database role/database (see $PG_LOG)"
fi

# ---------------------------------------------------------------- start: mlflow server
# mlflow server reads --backend-store-uri from MLFLOW_BACKEND_STORE_URI (and hands it to its workers
# in their environment): the password never shows in `ps`.
export MLFLOW_BACKEND_STORE_URI="postgresql+$DB_DRIVER://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME"
MASKED_URI="postgresql+$DB_DRIVER://$DB_USER:***@127.0.0.1:$PG_PORT/$DB_NAME"
unset MLFLOW_TRACKING_URI MLFLOW_REGISTRY_URI
export PATH="$(dirname "$MLFLOW"):$PATH"
CLIENT_HOST=$HOST
[[ "$HOST" == 0.0.0.0 || "$HOST" == "::" ]] && CLIENT_HOST=$(hostname -f 2>/dev/null || hostname)
CHECK_HOST=$HOST
[[ "$HOST" == 0.0.0.0 || "$HOST" == "::" ]] && CHECK_HOST=127.0.0.1
TRACKING_URI="http://$CLIENT_HOST:$MLFLOW_PORT"
SERVER_ARGS=(server --host "$HOST" --port "$MLFLOW_PORT" --workers "$WORKERS"
    --serve-artifacts --artifacts-destination "$ARTIFACTS_DIR" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
say "backend store $MASKED_URI (password in $PASSWORD_FILE)"
say "artifacts proxied into $ARTIFACTS_DIR"

healthy() {
    if command -v curl >/dev/null; then
        curl -sf -o /dev/null --max-time 2 "http://$CHECK_HOST:$MLFLOW_PORT/health"
    else
        "${MLFLOW_PYTHON:-python3}" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "http://$CHECK_HOST:$MLFLOW_PORT/health" 2>/dev/null
    fi
}

tell_clients() {
    say "tracking server ready: $TRACKING_URI"
    echo "  export MLFLOW_TRACKING_URI=$TRACKING_URI     # or: python -m vit_exp.run mlflow.tracking_uri=$TRACKING_URI"
}

if [[ $BACKGROUND == 1 ]]; then
    : >>"$MLFLOW_LOG" && chmod 0644 "$MLFLOW_LOG"  # made here: the background job may not have opened it yet
    setsid "$MLFLOW" "${SERVER_ARGS[@]}" >>"$MLFLOW_LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$MLFLOW_PID_FILE"
    chmod 0644 "$MLFLOW_PID_FILE"
    deadline=$((SECONDS + START_TIMEOUT))
    until healthy; do
        if ! pid_alive "$pid"; then
            rm -f "$MLFLOW_PID_FILE"
            tail -n 30 "$MLFLOW_LOG" >&2 || true
            cleanup_pg_on_failure
            die "mlflow server exited during start (its last lines are above; port $MLFLOW_PORT in use?); log: $MLFLOW_LOG"
        fi
        if ((SECONDS >= deadline)); then
            stop_mlflow "$pid"
            rm -f "$MLFLOW_PID_FILE"
            tail -n 30 "$MLFLOW_LOG" >&2 || true
            cleanup_pg_on_failure
            die "mlflow server did not answer /health within ${START_TIMEOUT}s; log: $MLFLOW_LOG"
        fi
        sleep 0.5
    done
    say "mlflow server pid $pid (log $MLFLOW_LOG); stop both with: $0 stop --data-dir $DATA_DIR"
    tell_clients
    exit 0
fi

# foreground: the server runs in its own session (so its workers can be stopped as a group); Ctrl-C
# or SIGTERM to this script stops it, then PostgreSQL (if this script started it)
MLFLOW_CHILD=
READY_WATCH=
on_exit() {
    trap - EXIT INT TERM
    if [[ -n "$READY_WATCH" ]]; then kill "$READY_WATCH" 2>/dev/null || true; fi
    if [[ -n "$MLFLOW_CHILD" ]]; then stop_mlflow "$MLFLOW_CHILD"; fi
    rm -f "$MLFLOW_PID_FILE"
    cleanup_pg_on_failure
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
setsid "$MLFLOW" "${SERVER_ARGS[@]}" </dev/null &
MLFLOW_CHILD=$!
echo "$MLFLOW_CHILD" >"$MLFLOW_PID_FILE"
chmod 0644 "$MLFLOW_PID_FILE"
(
    for ((i = 0; i < START_TIMEOUT * 2; i++)); do
        if healthy; then tell_clients; say "Ctrl-C stops the server and PostgreSQL"; exit 0; fi
        sleep 0.5
    done
) &
READY_WATCH=$!
rc=0
wait "$MLFLOW_CHILD" || rc=$?
MLFLOW_CHILD=
say "mlflow server exited ($rc)"
exit "$rc"
