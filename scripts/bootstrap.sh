# Sourced by scripts/demo and scripts/test: make .venv with the project installed.
# Installs only what is missing; re-runs are quick. Set ADAPTRAIN_PYTHON to choose the
# interpreter (default python3, 3.10-3.13).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${ADAPTRAIN_PYTHON:-python3}"
step() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if ! command -v "$PY" >/dev/null; then
  echo "error: $PY not found; install Python 3.10-3.13 or set ADAPTRAIN_PYTHON" >&2; exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment in .venv"
  "$PY" -m venv "$VENV"
fi
# Rebuild when the project definition or the native sources changed since the last install.
stamp="$VENV/.adaptrain-installed"
extras="${1:-}"
want="$( { cat "$ROOT/pyproject.toml" "$ROOT"/agent/native/CMakeLists.txt; find "$ROOT/agent/native/src" -type f -print0 | LC_ALL=C sort -z | xargs -0 cat; } 2>/dev/null | sha256sum | cut -c1-16)$extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  step "installing Python packages (TensorFlow is ~600 MB to download the first time; pip shows progress)"
  "$VENV/bin/python" -m pip install --upgrade --quiet pip
  "$VENV/bin/python" -m pip install --progress-bar on scikit-build-core nanobind cmake ninja
  # PyTorch (the torch extra, and the test extra for the PyTorch runtime's tests): PyPI's
  # Linux wheel pulls the CUDA runtime (several GB), so take the CPU wheel (~190 MB) from
  # PyTorch's own index first; pip then finds the requirement met. A GPU node installs
  # its CUDA build itself beforehand (docs/pytorch.md).
  case ",$extras," in
    *,torch,*|*,test,*)
      if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        step "installing PyTorch's CPU wheel"
        "$VENV/bin/python" -m pip install --progress-bar on --timeout 20 --retries 1 \
          --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<3" ||
          { step "PyTorch's CPU index did not answer; installing torch from PyPI (a CUDA build, several GB)"
            "$VENV/bin/python" -m pip install --progress-bar on "torch>=2.4,<3"; }
      fi
      ;;
  esac
  step "building the native collective library and installing the project"
  "$VENV/bin/python" -m pip install --progress-bar on --no-build-isolation -e "$ROOT${extras:+[$extras]}"
  echo "$want" > "$stamp"
else
  step "Python packages are up to date"
fi
