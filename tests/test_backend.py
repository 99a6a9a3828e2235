"""The backend: one place that knows where arrays live."""

import subprocess
import sys

import numpy as np
import pytest

from dpo_np import backend


@pytest.fixture
def restore_backend():
    yield
    backend.set_backend("numpy")


def test_numpy_is_the_default_backend():
    assert backend.xp() is np
    assert backend.backend_name() == "numpy"
    assert backend.default_dtype() is np.float32


def test_asking_for_cupy_without_cupy_names_the_fix(monkeypatch, restore_backend):
    monkeypatch.setitem(sys.modules, "cupy", None)       # makes `import cupy` fail
    with pytest.raises(RuntimeError, match=r'pip install "dpo-np\[gpu\]"'):
        backend.set_backend("cupy")
    assert backend.xp() is np                             # a failed switch changes nothing


def test_cupy_without_a_visible_gpu_is_a_clear_error(monkeypatch, restore_backend):
    class FakeRuntime:
        @staticmethod
        def getDeviceCount():
            return 0

    fake = type(sys)("cupy")
    fake.cuda = type(sys)("cupy.cuda")
    fake.cuda.runtime = FakeRuntime
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        backend.set_backend("cupy")


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.set_backend("torch")


def test_environment_variable_selects_the_backend_at_first_use():
    code = "from dpo_np import backend; print(backend.backend_name())"
    env_ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"DPO_NP_BACKEND": "numpy", "PATH": ""})
    assert env_ok.stdout.strip() == "numpy"
    env_bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={"DPO_NP_BACKEND": "jax", "PATH": ""})
    assert env_bad.returncode != 0 and "backend must be one of" in env_bad.stderr


def test_same_seed_gives_the_same_numbers():
    a = backend.rng(7).standard_normal(5)
    b = backend.rng(7).standard_normal(5)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="seed"):
        backend.rng(None)


def test_default_dtype_must_be_floating():
    with pytest.raises(ValueError, match="floating"):
        backend.set_default_dtype(np.int32)


def test_scatter_add_accumulates_repeated_indices():
    out = backend.scatter_add(np.zeros(3), np.array([0, 0, 2]), np.array([1.0, 2.0, 5.0]))
    np.testing.assert_array_equal(out, [3.0, 0.0, 5.0])


def test_importing_every_module_of_the_package_loads_nothing_heavy():
    code = ("import importlib, pkgutil, sys, dpo_np\n"
            "for m in pkgutil.iter_modules(dpo_np.__path__):\n"
            "    if m.name != '__main__': importlib.import_module('dpo_np.' + m.name)\n"
            "print([m for m in ('matplotlib', 'cupy', 'torch', 'jax', 'scipy', 'tqdm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
