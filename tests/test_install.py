"""What a new user meets before the first step: the extras, the messages of a missing
optional library, and the files a wheel must carry (``py.typed``, the license)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_error(module: str, blocked: str) -> str:
    """The last line of the error of importing ``module`` while ``blocked`` is missing."""
    code = f"import sys; sys.modules[{blocked!r}] = None\nimport {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, f"importing {module} without {blocked} worked"
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("module", ["inertia.torch", "inertia.torch_flat"])
def test_a_torch_module_without_torch_names_the_extra(module):
    line = _import_error(module, "torch")
    assert line.startswith("ModuleNotFoundError: ")
    assert "needs PyTorch, which is not installed" in line and "pip install 'inertia[torch]'" in line
    assert "--index-url https://download.pytorch.org/whl/cpu" in line


def test_a_backend_without_its_library_names_the_extra():
    code = (
        "import sys; sys.modules['jax'] = None\n"
        "from inertia import backend\n"
        "backend.get('jax')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'inertia[jax]'" in result.stderr.strip().splitlines()[-1]


def test_import_inertia_needs_no_optional_library():
    code = (
        "import sys\n"
        "for name in ('torch', 'jax', 'mlx', 'tensorflow', 'keras', 'sklearn'): sys.modules[name] = None\n"
        "import inertia, inertia.legacy, inertia.mlx, numpy as np\n"
        "v = inertia.Variable(np.ones(2, np.float32))\n"
        "inertia.SGD(0.5, momentum=0.9).apply([np.ones(2, np.float32)], [v])\n"
        "print(v.numpy().tolist())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0.5, 0.5]"


def test_the_package_ships_its_type_hints_and_the_wheel_carries_them():
    assert resources.files("inertia").joinpath("py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["inertia"]


def test_the_license_file_is_the_declared_one():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_every_extra_the_readme_names_exists():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(config["project"]["optional-dependencies"])
    install = (ROOT / "README.md").read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"inertia\[(\w+)\]", install))
    assert named and named <= extras, named - extras
    assert {"torch", "jax", "mlx", "demo"} <= named
