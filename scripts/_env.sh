# Sourced by scripts/serve and scripts/test: make sure .venv exists and holds this
# checkout, installed editable with the given extras. Re-installs when pyproject.toml
# changes. Needs only python3 (3.11+) with venv, as on a fresh machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
extras=${1:-server}
venv="$root/.venv"
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  "$py" -m venv "$venv"
fi
stamp="$venv/.agentcast-$extras"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing agentcast[$extras] into $venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
