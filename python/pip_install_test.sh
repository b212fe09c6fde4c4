#!/usr/bin/env bash
# CTest python_pip_install: the README's `pip install --no-build-isolation .` from a copy of the
# sources into a fresh virtual environment (system site packages: Debian's setuptools, pybind11
# and NumPy; no network), then `import mmfree` runs the bundled model.
set -euo pipefail
src=$1 python=$2 work=$3
rm -rf "$work" && mkdir -p "$work/src"
cp -r "$src/setup.py" "$src/pyproject.toml" "$src/include" "$src/python" "$work/src/"
"$python" -m venv --system-site-packages "$work/venv"
(cd "$work/src" && "$work/venv/bin/pip" install --no-build-isolation --no-index --quiet .)
cd "$work" && "$work/venv/bin/python" - "$src/models/kjv-demo.gguf" <<'PY'
import sys
import mmfree
m = mmfree.Model(sys.argv[1], threads=2)
out = m("In the beginning", max_tokens=8, temperature=0)
assert out["usage"]["completion_tokens"] == 8, out
assert mmfree.__file__.startswith(sys.prefix), mmfree.__file__  # the installed module, not a build tree's
print("installed:", mmfree.__version__, repr(out["choices"][0]["text"]))
PY
