"""The built wheel works without the source checkout: `vitrine --help` and a recommendation from a fresh venv.

The wheel is built from this tree and installed with `--no-deps` into a new virtual environment whose
only other packages are this venv's dependencies (a path entry to their site-packages, whose `.pth`
files, the editable install's among them, are not processed). The commands run from a folder outside
the checkout, so every module, the Feast configurations and `definitions.py` come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shops import served_shop

ROOT = Path(__file__).resolve().parent.parent
# Building and installing the wheel takes ~20 s; one recommendation ~15 s of imports on 2 busy cores.
COMMAND_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding the vitrine wheel; the dependencies are this venv's, read through a path entry."""
    work = tmp_path_factory.mktemp("wheel")
    # A copy of the sources: setuptools builds in the tree it is given (build/, *.egg-info).
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "data", "build", "*.egg-info", "__pycache__", ".cache",
                                                                 "mlruns", ".mypy_cache", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(work), str(source)],
                   check=True, timeout=COMMAND_TIMEOUT_S, cwd=work)
    wheel = next(work.glob("vitrine-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=COMMAND_TIMEOUT_S)
    packages = next(venv.glob("lib/python*/site-packages"))
    (packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--quiet", str(wheel)],
                   check=True, timeout=COMMAND_TIMEOUT_S)
    return venv


def run_in(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def test_every_module_comes_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    probe = "import json, embeddings, feature_repo, ranking, training, vitrine; " \
            "print(json.dumps({m.__name__: m.__file__ for m in (embeddings, feature_repo, ranking, training, vitrine)}))"
    done = run_in(wheel_venv, str(wheel_venv / "bin" / "python"), "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where = json.loads(done.stdout)
    assert all(str(wheel_venv) in path and str(ROOT) not in path for path in where.values()), where
    shipped = Path(where["feature_repo"]).parent
    assert {"definitions.py", "feature_store.yaml", "feature_store.redis.yaml", ".feastignore"} <= {p.name for p in shipped.iterdir()}


def test_help_and_a_recommendation_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    helped = run_in(wheel_venv, "vitrine", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "recommend" in helped.stdout and "pipeline" in helped.stdout

    data = served_shop()
    user = str(__import__("pandas").read_parquet(data.users)["user_id"].iloc[0])
    done = run_in(wheel_venv, "vitrine", "recommend", user, "--k", "5", "--json", "--data-dir", str(data.root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    lists = answer if isinstance(answer, list) else [answer]
    assert len(lists[0]["items"]) == 5 and lists[0]["user_id"] == user
