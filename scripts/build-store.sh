#!/usr/bin/env bash
# Installs, once, what the store needs: PostgreSQL 15 with FerretDB's DocumentDB extension,
# and FerretDB 2.5.0. Called by scripts/infra.sh; safe to run again (each step is skipped
# when its result is already in place).
#
#   scripts/build-store.sh            install what is missing
#   scripts/build-store.sh --check    exit 0 when everything is installed, 1 otherwise
#
# Sources:
#   - Debian packages: PostgreSQL 15 (server, contrib, headers), PostGIS and RUM (DocumentDB
#     depends on both), PCRE2, Intel's decimal library, Kerberos headers, a C toolchain.
#   - Pinned source archives, checked against the SHA-256 sums below: DocumentDB (FerretDB's
#     fork, the tag paired with FerretDB 2.5.0), pg_cron 1.6.3, pgvector 0.8.0 and libbson
#     from mongo-c-driver 1.28.0. With internet, the same archives are those projects' tags
#     on GitHub; without it, they are found in $BZPEER_VENDOR_DIR or the first `shared/vendor`
#     folder above the repository.
#   - FerretDB 2.5.0 from the Go module proxy.
#
# PostgreSQL 15 loads extensions only from its own folders, so the three extensions are
# installed there (`make install`, as root). libbson and the build trees stay under
# $BZPEER_HOME/store, FerretDB under $BZPEER_HOME/bin.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${BZPEER_HOME:-$ROOT/.local}"
STORE="$HOME_DIR/store"
LOGS="$HOME_DIR/logs"
LOG="$LOGS/store-build.log"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
FERRETDB_VERSION="v2.5.0"
FERRETDB_BIN="$HOME_DIR/bin/ferretdb-$FERRETDB_VERSION"
JOBS="$(nproc 2>/dev/null || echo 2)"

# archive, SHA-256, and the extension version its control file names once installed
DOCUMENTDB=documentdb-0.106.0-ferretdb-2.5.0
DOCUMENTDB_SHA=338579c6ea0d1275b0a768e6ed44cb58d13a9db055d454ccbb1951b6240b0fdf
DOCUMENTDB_EXT_VERSION=0.106-0
PG_CRON=pg_cron-1.6.3
PG_CRON_SHA=105b669241ea200f0e9a5ffbc2c4e8c33b0dfaba2b13e06cdb4621382b7995d5
PG_CRON_EXT_VERSION=1.6
PGVECTOR=pgvector-0.8.0
PGVECTOR_SHA=f735d37c1f8a32a0c46f29db63860bdc1ed06a423d4280767afbd38f1fe58778
PGVECTOR_EXT_VERSION=0.8.0
MONGO_C=mongo-c-driver-1.28.0
MONGO_C_SHA=20c90f2bb525fef4c2f9f3f3925392641e10d8e544c72fd3858c89de533993c3

# Not postgresql-15-cron: Debian's pg_cron 1.4 has no per-second schedules, which DocumentDB
# uses ("invalid schedule: 2 seconds"); pg_cron comes from the pinned source instead.
DEBIAN_PACKAGES=(postgresql-15 postgresql-contrib postgresql-server-dev-15 postgresql-15-postgis-3
  postgresql-15-rum libpcre2-dev libintelrdfpmath-dev libkrb5-dev build-essential pkg-config cmake)

die() { echo "store: $*" >&2; exit 1; }
step() { echo "store: $*"; echo "== $*" >>"$LOG"; }

control_version() { # control_version EXT: default_version in the installed control file, or nothing
  local f; f="$("$PG_CONFIG" --sharedir 2>/dev/null)/extension/$1.control"
  [[ -f "$f" ]] && sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" "$f"
}

installed() { # installed EXT VERSION LIBRARY: the control file names VERSION and the library exists
  [[ "$(control_version "$1")" == "$2" && -f "$("$PG_CONFIG" --pkglibdir)/$3.so" ]]
}

missing_packages() {
  local p
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

all_installed() {
  [[ -x "$PG_CONFIG" && -z "$(missing_packages)" && -x "$FERRETDB_BIN" ]] \
    && installed pg_cron "$PG_CRON_EXT_VERSION" pg_cron \
    && installed vector "$PGVECTOR_EXT_VERSION" vector \
    && installed documentdb "$DOCUMENTDB_EXT_VERSION" pg_documentdb \
    && installed documentdb_core "$DOCUMENTDB_EXT_VERSION" pg_documentdb_core
}

vendor_dir() { # the folder with the pinned archives
  if [[ -n "${BZPEER_VENDOR_DIR:-}" ]]; then echo "$BZPEER_VENDOR_DIR"; return; fi
  local d="$ROOT"
  while [[ "$d" != / ]]; do
    d="$(dirname "$d")"
    [[ -f "$d/shared/vendor/$DOCUMENTDB.tar.gz" ]] && { echo "$d/shared/vendor"; return; }
  done
  die "the pinned source archives ($DOCUMENTDB.tar.gz and three more) were not found; set BZPEER_VENDOR_DIR to their folder (see the README, Store)"
}

unpack() { # unpack NAME SHA: check the archive's sum, extract it under $STORE/src, print the folder
  local archive; archive="$(vendor_dir)/$1.tar.gz"
  [[ -f "$archive" ]] || die "missing $archive"
  echo "$2  $archive" | sha256sum -c --status - || die "SHA-256 of $archive is not $2: refusing to build it"
  rm -rf "$STORE/src/$1"; mkdir -p "$STORE/src"
  tar -xzf "$archive" -C "$STORE/src"
  [[ -d "$STORE/src/$1" ]] || die "$archive did not unpack into $1/"
  echo "$STORE/src/$1"
}

install_packages() {
  local missing; missing="$(missing_packages | tr '\n' ' ')"
  [[ -z "${missing// }" ]] && return 0
  [[ $EUID -eq 0 ]] || die "missing Debian packages: $missing(install them as root: apt-get install $missing)"
  step "installing Debian packages: $missing"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >>"$LOG" 2>&1 \
    || { apt-get update -q >>"$LOG" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >>"$LOG" 2>&1; } \
    || die "apt-get install failed; see $LOG"
}

build_libbson() { # static libbson 1.28 (Debian's 1.23 lacks BSON_SUBTYPE_SENSITIVE)
  [[ -f "$STORE/libbson/lib/pkgconfig/libbson-static-1.0.pc" ]] && return 0
  step "building libbson from $MONGO_C"
  local src; src="$(unpack "$MONGO_C" "$MONGO_C_SHA")"
  cmake -S "$src" -B "$src/_build" -DENABLE_MONGOC=OFF -DENABLE_TESTS=OFF -DENABLE_EXAMPLES=OFF \
    -DENABLE_STATIC=ON -DENABLE_SHARED=OFF -DENABLE_ICU=OFF -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS=-fPIC -DCMAKE_INSTALL_PREFIX="$STORE/libbson" -DCMAKE_INSTALL_LIBDIR=lib >>"$LOG" 2>&1 \
    && cmake --build "$src/_build" -j "$JOBS" >>"$LOG" 2>&1 \
    && cmake --install "$src/_build" >>"$LOG" 2>&1 \
    || die "building libbson failed; see $LOG"
  rm -rf "$src"
}

intelmathlib_pc() { # DocumentDB asks pkg-config for "intelmathlib"; Debian's libintelrdfpmath-dev is it
  mkdir -p "$STORE/pkgconfig"
  cat >"$STORE/pkgconfig/intelmathlib.pc" <<'PC'
Name: intelmathlib
Description: Intel Decimal Floating-Point Math Library (Debian libintelrdfpmath-dev)
Version: 2.0u2
Cflags: -I/usr/include
Libs: -L/usr/lib/x86_64-linux-gnu -l:libbidgcc000.a
PC
}

make_install() { # make_install NAME SHA [SUBDIR...]: build a PGXS extension and install it
  local name=$1 sha=$2; shift 2
  step "building $name"
  local src; src="$(unpack "$name" "$sha")"
  local dirs=("$@"); (( ${#dirs[@]} )) || dirs=(.)
  local d
  for d in "${dirs[@]}"; do
    PKG_CONFIG_PATH="$STORE/libbson/lib/pkgconfig:$STORE/pkgconfig" \
      make -C "$src/$d" -j "$JOBS" PG_CONFIG="$PG_CONFIG" >>"$LOG" 2>&1 \
      && PKG_CONFIG_PATH="$STORE/libbson/lib/pkgconfig:$STORE/pkgconfig" \
      make -C "$src/$d" install PG_CONFIG="$PG_CONFIG" >>"$LOG" 2>&1 \
      || die "building $name${d:+ ($d)} failed; see $LOG"
  done
  rm -rf "$src"
}

install_extensions() {
  local need=0
  installed pg_cron "$PG_CRON_EXT_VERSION" pg_cron || need=1
  installed vector "$PGVECTOR_EXT_VERSION" vector || need=1
  installed documentdb "$DOCUMENTDB_EXT_VERSION" pg_documentdb || need=1
  installed documentdb_core "$DOCUMENTDB_EXT_VERSION" pg_documentdb_core || need=1
  (( need )) || return 0
  [[ -w "$("$PG_CONFIG" --pkglibdir)" ]] \
    || die "PostgreSQL's extension folder $("$PG_CONFIG" --pkglibdir) is not writable: run once as root"
  installed pg_cron "$PG_CRON_EXT_VERSION" pg_cron || make_install "$PG_CRON" "$PG_CRON_SHA"
  installed vector "$PGVECTOR_EXT_VERSION" vector || make_install "$PGVECTOR" "$PGVECTOR_SHA"
  build_libbson
  intelmathlib_pc
  make_install "$DOCUMENTDB" "$DOCUMENTDB_SHA" pg_documentdb_core pg_documentdb
  installed documentdb "$DOCUMENTDB_EXT_VERSION" pg_documentdb \
    || die "DocumentDB installed, but its control file names $(control_version documentdb), not $DOCUMENTDB_EXT_VERSION"
}

build_ferretdb() {
  [[ -x "$FERRETDB_BIN" ]] && return 0
  command -v go >/dev/null || die "Go is required to build FerretDB (e.g. apt-get install golang)"
  step "building FerretDB $FERRETDB_VERSION from the Go module proxy"
  local mod src="$STORE/src/ferretdb-$FERRETDB_VERSION"
  mod="$(go mod download -json "github.com/FerretDB/FerretDB/v2@$FERRETDB_VERSION" 2>>"$LOG" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$mod" && -d "$mod" ]] || die "go mod download of FerretDB failed; see $LOG"
  rm -rf "$src"; mkdir -p "$(dirname "$src")" "$(dirname "$FERRETDB_BIN")"
  cp -r "$mod" "$src"; chmod -R u+w "$src"
  # The module lacks the version file FerretDB's release tooling generates; without it the
  # binary panics at start.
  echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"
  # cmd/ferretdb/gomaxprocs.go is built only for Go < 1.25, whose runtime does not size
  # GOMAXPROCS to the container; on newer Go the runtime does it, so the call is a no-op.
  cat >"$src/cmd/ferretdb/gomaxprocs_go125.go" <<'GO'
//go:build go1.25

package main

import "log/slog"

// setGOMAXPROCS is left to the Go runtime, which is container-aware since Go 1.25.
func setGOMAXPROCS(*slog.Logger) {}
GO
  (cd "$src" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb) >>"$LOG" 2>&1 \
    || die "building FerretDB failed; see $LOG"
  mv "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
  rm -rf "$src"
}

mkdir -p "$LOGS" "$STORE"
if [[ "${1:-}" == "--check" ]]; then all_installed; exit; fi
all_installed && exit 0
: >"$LOG"
install_packages
[[ -x "$PG_CONFIG" ]] || die "$PG_CONFIG not found after installing PostgreSQL 15"
install_extensions
build_ferretdb
step "installed: PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}'), DocumentDB $DOCUMENTDB_EXT_VERSION, FerretDB $FERRETDB_VERSION"
