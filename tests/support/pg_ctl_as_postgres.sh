#!/usr/bin/env bash
# pg_ctl for pytest-postgresql when the tests run as root (as CI does): PostgreSQL refuses to run
# as root, so the real pg_ctl runs as the `postgres` user, and the folders pytest-postgresql made
# for it (data, socket, log) are handed to that user. Only those folders themselves change owner,
# never recursively and never a shared sticky folder such as /tmp. As any other user, plain pg_ctl.
set -euo pipefail
pg_ctl="$(ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)"
if [ "$(id -u)" -ne 0 ]; then
    exec "$pg_ctl" "$@"
fi

open_parents() {  # let postgres traverse every parent of $1
    local parent
    parent="$(dirname "$1")"
    while [ "$parent" != "/" ]; do
        chmod o+x "$parent" 2>/dev/null || true
        parent="$(dirname "$parent")"
    done
}

grant_folder() {  # make $1 (one folder, not its contents) usable by postgres
    local folder="$1"
    case "$folder" in "" | "/" | "/tmp" | "/var/tmp" | "/dev/shm" | "/run") return 0 ;; esac
    mkdir -p "$folder"
    # A world-writable sticky folder (like /tmp) is already usable and shared: leave it alone.
    if [ -k "$folder" ] && [ -w "$folder" ] && [ "$(stat -c %A "$folder" | cut -c9)" = "w" ]; then
        return 0
    fi
    chown postgres:postgres "$folder"
    open_parents "$folder"
}

args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        -D | --pgdata)
            data="${args[$((i + 1))]}"
            if [ -d "$data" ]; then grant_folder "$data"; else grant_folder "$(dirname "$data")"; fi
            ;;
        -l)
            log="${args[$((i + 1))]}"
            grant_folder "$(dirname "$log")"
            touch "$log"
            chown postgres:postgres "$log"
            ;;
    esac
    if [[ "${args[$i]}" == *"unix_socket_directories="* ]]; then
        grant_folder "$(sed -E "s/.*unix_socket_directories='([^']*)'.*/\1/" <<<"${args[$i]}")"
    fi
done
cd /  # the caller's folder may be closed to postgres
exec runuser -u postgres -- "$pg_ctl" "${args[@]}"
