"""The README's Python snippet runs as written (here: on the CPU, through the interpreter)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_python_snippet_runs(tmp_path):
    blocks = python_blocks((ROOT / "README.md").read_text())
    snippet = next(b for b in blocks if "mhfgen.flash_mhf(q, k, u, v, r)" in b)
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-4  # kernels vs the reference
