"""`python -m ehrlab.data.synthetic`: the command, and the generator run from a non-editable
install (no repository, so no conf/ next to the package)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ehrlab.data.synthetic import SyntheticConfig, write_synthetic_mimic3
from ehrlab.data.synthetic.__main__ import main

REPO = Path(__file__).resolve().parents[2]
FILES = ("PATIENTS.csv.gz", "ADMISSIONS.csv.gz", "DIAGNOSES_ICD.csv.gz", "planted_risk.parquet",
         "README.md", "SYNTHETIC_CONFIG.json")


def test_command_writes_what_the_library_writes_and_says_where(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--n-patients", "60", "--seed", "2"])
    printed = capsys.readouterr().out
    library = write_synthetic_mimic3(tmp_path / "library", SyntheticConfig(n_patients=60, seed=2))
    for name in FILES:
        assert (tmp_path / "cli" / name).read_bytes() == (library / name).read_bytes(), name
        assert name in printed
    assert str((tmp_path / "cli").resolve()) in printed
    assert "60 patients" in printed


def test_command_rejects_zero_patients_naming_its_own_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--out", str(tmp_path / "cli"), "--n-patients", "0"])
    assert stopped.value.code == 2
    assert "--n-patients" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def _run(command: list, cwd: Path, env: dict) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_non_editable_install_generates_the_default_source(tmp_path):
    """`pip install` (not -e) into a fresh venv, then the command from a directory outside the
    repository. The venv sees this machine's packages (--system-site-packages: torch & co. are
    not downloaded) and pip is offline (--no-index; --no-build-isolation builds with the
    installed setuptools). pip builds in its source tree, so it installs from a copy of what
    pyproject.toml packages, leaving the shared working tree untouched."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], elsewhere, env)
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
          "--no-index", str(project)], elsewhere, env)

    # The main environment's editable install is on the venv's path too: it must not win.
    where = json.loads(_run([str(python), "-c", (
        "import json, ehrlab, ehrlab.data.synthetic as s; "
        "print(json.dumps([ehrlab.__file__, s.__file__]))")], elsewhere, env))
    site = venv.resolve()
    assert all(Path(path).resolve().is_relative_to(site) for path in where), where
    package = Path(where[0]).resolve()
    assert not any((parent / "conf" / "task").is_dir() for parent in package.parents)

    out = tmp_path / "out"
    printed = _run([str(python), "-m", "ehrlab.data.synthetic", "--out", str(out), "--n-patients", "200"],
                   elsewhere, env)
    assert str(out.resolve()) in printed and "200 patients" in printed
    # The installed generator is this one: same draw, same bytes.
    here = write_synthetic_mimic3(tmp_path / "here", SyntheticConfig(n_patients=200))
    for name in FILES:
        assert (out / name).read_bytes() == (here / name).read_bytes(), name

    # And the default source (generator -> cache -> mimic3 reader) runs from the install.
    read = json.loads(_run([str(python), "-c", (
        "import json, sys; from ehrlab.data.sources.synthetic import SyntheticSource; "
        "tables = SyntheticSource(cache_dir=sys.argv[1], n_patients=200).read(); "
        "print(json.dumps(int(tables.static['subject_id'].nunique())))"), str(tmp_path / "cache")],
        elsewhere, env))
    assert read == 200
