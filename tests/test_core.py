"""The shared utilities: explicit RNG, atomic writes, CLI registry, import hygiene."""
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from fastcas import _io, _rng, cli


def test_generator_is_a_pure_function_of_its_keys():
    a = _rng.generator(7, 1, 2).random(5)
    b = _rng.generator(7, 1, 2).random(5)
    c = _rng.generator(7, 1, 3).random(5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_generator_rejects_negative_keys():
    with pytest.raises(ValueError, match="non-negative"):
        _rng.generator(1, -2)


def test_counter_uniform_is_stateless_and_uniform():
    key = _rng.derive_key(3, 0, 1)
    u = _rng.counter_uniform(key, np.arange(200_000))
    # any slice equals the values computed for those counters alone
    np.testing.assert_array_equal(u[12345:12400], _rng.counter_uniform(key, np.arange(12345, 12400)))
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # neighbouring counters are not correlated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    # another key gives another stream
    other = _rng.counter_uniform(_rng.derive_key(3, 0, 2), np.arange(1000))
    assert not np.allclose(u[:1000], other)


def test_counter_uniform_handles_int64_counters_near_1e9():
    key = _rng.derive_key(1)
    big = np.array([10**9, 10**9 + 1, 2**40], dtype=np.int64)
    u = _rng.counter_uniform(key, big)
    assert np.all((u >= 0) & (u < 1)) and len(set(u.tolist())) == 3


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    target = tmp_path / "m.json"
    _io.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with _io.atomic_open(target, "w") as fh:
            fh.write('{"half": ')
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left


def test_every_cli_command_has_a_module_with_the_protocol():
    for name, module in cli.COMMANDS.items():
        mod = importlib.import_module(f"fastcas.commands.{module}")
        assert callable(mod.add_arguments) and callable(mod.run), name
        assert name in cli.SUMMARY


def test_cli_without_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "shard" in capsys.readouterr().out


def test_import_fastcas_loads_no_heavy_libraries():
    code = ("import sys, fastcas, fastcas.weights, fastcas.sampler, fastcas.reader, fastcas.shards;"
            "heavy = [m for m in ('torch', 'nvidia.dali', 'cupy', 'numba') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
