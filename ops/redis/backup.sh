#!/bin/sh
# Back up a running Redis without stopping it: an RDB snapshot (BGSAVE) and a copy of its
# append-only files (Redis 7: the directory named by appenddirname, with its manifest).
# Run it on the Redis host (it copies files out of Redis's data directory) as a user that
# can read them. Restoring: docs/operations.md, "Backups and restores of Redis".
#
#   ops/redis/backup.sh DEST [redis-cli options]
#   ops/redis/backup.sh /backups/redis-$(date -u +%Y%m%dT%H%M%SZ) -s /var/lib/charging/redis/redis.sock
#
# A password goes in REDISCLI_AUTH (never on the command line, where ps shows it); with an
# ACL user add --user NAME. The user needs CONFIG GET/SET, BGSAVE and INFO.
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 DEST [redis-cli options]" >&2
    exit 2
fi
dest=$1
shift

cli() { redis-cli --no-auth-warning --raw "$@"; }
config() { cli "$@" CONFIG GET "$CONFIG_NAME" | sed -n 2p; }
info() { cli "$@" INFO persistence | tr -d '\r' | sed -n "s/^$INFO_NAME://p"; }

CONFIG_NAME=dir; dir=$(config "$@")
CONFIG_NAME=dbfilename; dbfilename=$(config "$@")
CONFIG_NAME=appendonly; appendonly=$(config "$@")
CONFIG_NAME=appenddirname; appenddirname=$(config "$@")
[ -n "$dir" ] || { echo "error: cannot ask Redis for its data directory (CONFIG GET dir)" >&2; exit 1; }
mkdir -p "$dest"

# 1. RDB: a snapshot taken now, copied once Redis has finished writing it.
INFO_NAME=rdb_saves; saves=$(info "$@")
# SCHEDULE: after an AOF rewrite that is running; a snapshot already running began before
# now, so it is waited for and another one asked for.
until [ "$(cli "$@" BGSAVE SCHEDULE)" != "ERR Background save already in progress" ]; do sleep 1; done
waited=0
while :; do
    INFO_NAME=rdb_bgsave_in_progress; busy=$(info "$@")
    INFO_NAME=rdb_saves; now=$(info "$@")
    [ "$busy" = 0 ] && [ "$now" -gt "$saves" ] && break
    waited=$((waited + 1))
    [ "$waited" -lt 3600 ] || { echo "error: BGSAVE did not finish within an hour" >&2; exit 1; }
    sleep 1
done
INFO_NAME=rdb_last_bgsave_status; status=$(info "$@")
[ "$status" = ok ] || { echo "error: BGSAVE failed (see Redis's log)" >&2; exit 1; }
cp "$dir/$dbfilename" "$dest/dump.rdb.tmp" && mv "$dest/dump.rdb.tmp" "$dest/dump.rdb"
echo "RDB snapshot: $dest/dump.rdb"

# 2. AOF: with automatic rewrites off (a rewrite replaces the files being copied), once no
# rewrite runs, copy the directory; then rewrites are turned on again, whatever happened.
if [ "$appendonly" = yes ]; then
    CONFIG_NAME=auto-aof-rewrite-percentage; percentage=$(config "$@")
    restore() { cli "$@" CONFIG SET auto-aof-rewrite-percentage "$percentage" >/dev/null; }
    trap 'restore "$@"' EXIT
    cli "$@" CONFIG SET auto-aof-rewrite-percentage 0 >/dev/null
    while :; do
        INFO_NAME=aof_rewrite_in_progress; busy=$(info "$@")
        INFO_NAME=aof_rewrite_scheduled; scheduled=$(info "$@")
        [ "$busy" = 0 ] && [ "$scheduled" = 0 ] && break
        sleep 1
    done
    rm -rf "$dest/$appenddirname.tmp"
    cp -R "$dir/$appenddirname" "$dest/$appenddirname.tmp"
    mv "$dest/$appenddirname.tmp" "$dest/$appenddirname"
    restore "$@"
    trap - EXIT
    echo "AOF: $dest/$appenddirname"
fi
