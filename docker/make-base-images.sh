#!/usr/bin/env bash
# Make the deployment's two base images from Debian packages, for hosts that reach a Debian mirror but
# no container registry (so python:3.11-slim and postgres:16 cannot be pulled):
#   a2b-base:bookworm           Debian 12 with its python3.11 (+ venv, passwd, ca-certificates)
#                               -> A2B_BASE_IMAGE (docker/Dockerfile's BASE_IMAGE build argument)
#   a2b-postgres:15-bookworm    Debian 12's postgresql 15 with a small entrypoint that initialises the
#                               database from POSTGRES_USER/PASSWORD/DB like the official image, as
#                               user postgres -> A2B_POSTGRES_IMAGE (docker-compose.yaml)
# Each is a debootstrap'ed root filesystem loaded with `docker import`. An image that already exists is
# kept (A2B_REBUILD_BASE=1 makes it again). Needs root, debootstrap and a running engine:
#   sudo bash docker/make-base-images.sh
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE_IMAGE=${A2B_BASE_IMAGE:-a2b-base:bookworm}
POSTGRES_IMAGE=${A2B_POSTGRES_IMAGE:-a2b-postgres:15-bookworm}
DOCKER=${DOCKER:-docker}
WORK=$(mktemp -d /tmp/a2b-rootfs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

have_image() { [ "${A2B_REBUILD_BASE:-0}" != 1 ] && "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# debootstrap SUITE into $WORK/$1 with the packages $2 (comma-separated), then trim what an image
# never needs (apt lists, docs, man pages, locales beyond C.UTF-8).
rootfs() {
  local dir=$WORK/$1
  debootstrap --variant=minbase --include="$2" "$SUITE" "$dir" "$MIRROR" >"$WORK/$1.log" 2>&1 || {
    tail -20 "$WORK/$1.log" >&2
    return 1
  }
  chroot "$dir" apt-get clean
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/var/log/*.log
  echo "$dir"
}

if have_image "$BASE_IMAGE"; then
  echo "base image $BASE_IMAGE: exists"
else
  echo "base image $BASE_IMAGE: debootstrap $SUITE + python3 ..."
  dir=$(rootfs base python3,python3-venv,ca-certificates,passwd)
  tar -C "$dir" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE" >/dev/null
  "$DOCKER" run --rm "$BASE_IMAGE" python3 -c 'import sys, venv; print("  python", sys.version.split()[0])'
fi

if have_image "$POSTGRES_IMAGE"; then
  echo "postgres image $POSTGRES_IMAGE: exists"
else
  echo "postgres image $POSTGRES_IMAGE: debootstrap $SUITE + postgresql ..."
  dir=$(rootfs postgres postgresql)
  pgbin=$(ls -d "$dir"/usr/lib/postgresql/*/bin | head -1)
  pgbin=${pgbin#"$dir"}
  # postgresql-common made a cluster at install time: the entrypoint initialises its own in PGDATA.
  rm -rf "$dir"/var/lib/postgresql/*/main "$dir"/etc/postgresql/*/main
  install -d -m 700 "$dir/var/lib/postgresql/data"
  chroot "$dir" chown postgres:postgres /var/lib/postgresql/data
  install -d -m 2775 "$dir/run/postgresql" # the server's socket directory (tmpfiles makes it on a host)
  chroot "$dir" chown postgres:postgres /run/postgresql
  install -m 755 /dev/stdin "$dir/usr/local/bin/postgres-entrypoint" <<'EOF'
#!/bin/sh
# Initialise PGDATA from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB on first start (as the
# official postgres image does), then run the server in the foreground. Runs as user postgres.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}" "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" |
      postgres --single -D "$PGDATA" -j postgres >/dev/null
  fi
  echo "postgres-entrypoint: initialised $PGDATA (database $POSTGRES_DB, user $POSTGRES_USER)"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
EOF
  tar -C "$dir" --numeric-owner -c . | "$DOCKER" import \
    --change "ENV PATH=$pgbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'ENV LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data' \
    --change 'USER postgres' \
    --change 'EXPOSE 5432' \
    --change 'ENTRYPOINT ["postgres-entrypoint"]' \
    - "$POSTGRES_IMAGE" >/dev/null
  "$DOCKER" run --rm --entrypoint postgres "$POSTGRES_IMAGE" --version | sed 's/^/  /'
fi
