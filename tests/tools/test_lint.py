"""The committed lint configuration (ruff.toml: E, F, W, I; line length 120; imports at the
top in sampling/, mix/, loading/ except heavy optional libraries) holds on the whole tree.
ruff comes with the [test] extra; a checkout without it skips (CI installs the extra)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_check_is_clean():
    pytest.importorskip("ruff", reason="ruff is installed by the [test] extra (pip install -e '.[test]')")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "fastcas", "kernels", "benchmarks",
                          "tests"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_the_configuration_is_committed_with_its_rules():
    text = (ROOT / "ruff.toml").read_text()
    select = next(line for line in text.splitlines() if line.startswith("select = "))
    assert "line-length = 120" in text and all(f'"{rule}"' in select for rule in ("E", "F", "W", "I", "PLC0415"))
    assert any('"ruff==' in line for line in (ROOT / "setup.py").read_text().splitlines())
