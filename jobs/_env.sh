# Sourced by the launch scripts: a venv with cocoi_mpi installed, and Open MPI settings.
# The first call creates .venv and installs the project (torch pinned to the CPU wheel);
# later calls reuse it, reinstalling only when setup.cfg changed.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${COCOI_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/cocoi" ] || [ "$ROOT/setup.cfg" -nt "$VENV/.cocoi-installed" ]; then
    echo "cocoi: setting up $VENV (first run only)" >&2
    "$PYTHON" -m venv "$VENV" || exit 1
    "$VENV/bin/pip" install --quiet --upgrade pip >/dev/null 2>&1
    if ! "$VENV/bin/pip" install --quiet -e "$ROOT[test]" >"$VENV/pip-install.log" 2>&1; then
        cat "$VENV/pip-install.log" >&2
        echo "cocoi: installing into $VENV failed (log above)" >&2
        exit 1
    fi
    touch "$VENV/.cocoi-installed"
fi
export PATH="$VENV/bin:$PATH"
# Open MPI refuses to run as root unless told; many containers and CI runners are root.
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# The libfabric transport is slow to start and useless on one node.
export OMPI_MCA_btl=${OMPI_MCA_btl:-^ofi}
