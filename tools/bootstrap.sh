#!/usr/bin/env bash
# One entry point that installs what refdecomp needs (idempotent) and then runs it.
#   bash tools/bootstrap.sh demo [refdecomp demo options]   # the main job, offline, embedded default
#   bash tools/bootstrap.sh test [pytest options]           # the test suite (installs the Keras oracles)
#   bash tools/bootstrap.sh cli <refdecomp arguments>       # any other refdecomp command
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
what=${1:-demo}
shift || true

install() {  # install the project with the given extra once per pyproject.toml version
  local extra=$1 stamp=".bootstrap-$1.stamp"
  local want; want=$(sha256sum pyproject.toml | cut -c1-16)
  # installed (from this checkout, checked outside it so the working folder does not count)?
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]] &&
     (cd / && "$PY" -c "import refdecomp, sys; sys.exit(not refdecomp.__file__.startswith('$PWD/'))") 2>/dev/null; then
    return
  fi
  "$PY" -m pip install -q --disable-pip-version-check -e ".[$extra]"
  if [[ $extra == test ]]; then
    # tf_keras declares the full `tensorflow` package, which clashes with tensorflow-cpu.
    "$PY" -m pip install -q --disable-pip-version-check --no-deps "tf_keras==2.21.0"
  fi
  echo "$want" > "$stamp"
}

case "$what" in
  demo) install cli; exec "$PY" -m refdecomp demo "$@" ;;
  test) install test; exec "$PY" -m pytest -n 2 "$@" ;;
  cli)  install cli;  exec "$PY" -m refdecomp "$@" ;;
  *) echo "usage: bash tools/bootstrap.sh demo|test|cli [args...]" >&2; exit 2 ;;
esac
