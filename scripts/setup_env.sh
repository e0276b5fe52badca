# Sourced by the other scripts: make the repo's virtual environment (.venv) and install into it.
# torch is pinned to 2.13.0 here (the project itself accepts torch>=2.9).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 -e ".[${NANOGPT_EXTRAS:-dev}]"
export PATH="$PWD/.venv/bin:$PATH"
