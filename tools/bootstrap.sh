#!/usr/bin/env bash
# One entry point that installs what refdecomp needs (idempotent) and then runs it.
#   bash tools/bootstrap.sh demo [refdecomp demo options]   # the main job, offline, embedded default
#   bash tools/bootstrap.sh test [pytest options]           # the test suite (installs the Keras oracles)
#   bash tools/bootstrap.sh cli <refdecomp arguments>       # any other refdecomp command
#
# Everything is installed into a virtual environment, never into the system interpreter:
#   - an already active one ($VIRTUAL_ENV), if any;
#   - otherwise ./.venv, created on first use with $PYTHON (default: python3); to switch
#     interpreters later, delete .venv.
# Afterwards run refdecomp as .venv/bin/refdecomp ... (or `source .venv/bin/activate`).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-demo}
shift || true

die() { echo "bootstrap: $*" >&2; exit 2; }

make_venv() {  # create ./.venv with $PYTHON; works where ensurepip is missing (Debian without python3-venv)
  local base=${PYTHON:-python3}
  command -v "$base" >/dev/null || die "no '$base' on PATH; set PYTHON=/path/to/python3 (3.11 or newer)"
  "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$base is Python $("$base" -c 'import sys; print(sys.version.split()[0])'); refdecomp needs 3.11 or newer (set PYTHON=)"
  if "$base" -m venv .venv 2>/dev/null; then return; fi
  # No ensurepip: make the venv without pip, then run pip straight from its wheel to install itself.
  rm -rf .venv
  "$base" -m venv --without-pip .venv || die "'$base -m venv' failed; install your distribution's venv package (Debian: apt-get install python3-venv)"
  local wheel
  wheel=$(.venv/bin/python tools/fetch_pip.py .venv) ||
    die "could not get pip for .venv (offline?); install python3-venv and retry"
  .venv/bin/python "$wheel/pip" install -q --disable-pip-version-check "$wheel"
  rm -f "$wheel"
}

if [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]]; then
  PY=$VIRTUAL_ENV/bin/python
else
  # (Re)create it when missing, or when an earlier run stopped before pip was in place.
  if ! { [[ -x .venv/bin/python ]] && .venv/bin/python -m pip --version >/dev/null 2>&1; }; then
    make_venv
  fi
  PY=$PWD/.venv/bin/python
fi

install() {  # install the project with the given extra once per pyproject.toml version
  local extra=$1 stamp; stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.refdecomp-bootstrap-$1"
  local want; want="$(sha256sum pyproject.toml | cut -c1-16) $PWD"
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
  test) install test
        # The shared data and Keras corpus beside the project, when present (tests skip without them).
        if [[ -z ${REFDECOMP_DATA:-} && -d ../shared/data ]]; then export REFDECOMP_DATA=$PWD/../shared/data; fi
        exec "$PY" -m pytest -n 2 "$@" ;;
  cli)  install cli;  exec "$PY" -m refdecomp "$@" ;;
  *) echo "usage: bash tools/bootstrap.sh demo|test|cli [args...]" >&2; exit 2 ;;
esac
