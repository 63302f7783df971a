"""The conda environments (envs/*.yaml, used with --use-conda) agree with pyproject.toml, and every
rule declares the directives that --use-conda and the cluster need: conda, log, threads, resources."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from conftest import ROOT

ENVS = ["torch.yaml", "stats.yaml"]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge package name -> PyPI name where they differ
PIN = re.compile(r"^([A-Za-z0-9_.-]+)=([0-9][^=<>!*|,\s]*)$")  # name=version, nothing looser
DIRECTIVES = ("conda", "log", "threads", "resources")
ACTIONS = ("script", "shell", "run", "notebook", "wrapper")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pip_pins() -> dict[str, str]:
    pins = {}
    for dep in pyproject()["dependencies"]:
        name, sep, version = dep.partition("==")
        assert sep, f"pyproject.toml dependency {dep!r} is not pinned with =="
        pins[name.strip().lower()] = version.strip()
    return pins


def env_pins(name: str) -> dict[str, str]:
    env = yaml.safe_load((ROOT / "envs" / name).read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"], f"envs/{name}: channels must be [conda-forge, nodefaults]"
    pins = {}
    for dep in env["dependencies"]:
        assert isinstance(dep, str), f"envs/{name}: {dep!r} is not a conda package (no pip: section)"
        m = PIN.match(dep.strip())
        assert m, f"envs/{name}: {dep!r} is not pinned as name=version"
        pins[m[1].lower()] = m[2]
    return pins


@pytest.mark.parametrize("name", ENVS)
def test_env_pins_equal_pyproject(name):
    pins, pip = env_pins(name), pip_pins()
    assert "python" in pins and len(pins) > 5
    for conda_name, version in pins.items():
        if conda_name == "python":
            continue
        pip_name = CONDA_TO_PIP.get(conda_name, conda_name)
        assert pip_name in pip, f"envs/{name}: {conda_name} has no pin in pyproject.toml"
        assert version == pip[pip_name], f"envs/{name}: {conda_name}={version} but pyproject.toml pins {pip_name}=={pip[pip_name]}"


@pytest.mark.parametrize("name", ENVS)
def test_env_python_equals_requires_python(name):
    version = env_pins(name)["python"]
    major, minor = map(int, version.split(".")[:2])
    spec = SpecifierSet(pyproject()["requires-python"])
    # requires-python admits exactly the python=X.Y series of the environment
    assert f"{major}.{minor}.0" in spec and f"{major}.{minor}.99" in spec, (name, version, spec)
    assert f"{major}.{minor - 1}.99" not in spec and f"{major}.{minor + 1}.0" not in spec, (name, version, spec)


def rule_blocks() -> dict[str, str]:
    """Rule name -> its text, for every `rule NAME:` in the Snakefile and rules/*.smk (a block ends
    at the next unindented line)."""
    blocks = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|[ \t]*\n)*)", path.read_text(), flags=re.M):
            assert m[1] not in blocks, f"rule {m[1]} defined twice"
            blocks[m[1]] = m[2]
    return blocks


def directives(block: str) -> set[str]:
    """The rule's directives: the keys at its first indentation level."""
    return set(re.findall(r"^ {4}(\w+):", block, flags=re.M))


def test_block_parser_finds_every_rule_of_the_workflow():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--list-rules",
         "--configfile", str(ROOT / "config.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    assert listed == set(rule_blocks()) and len(listed) > 20


def test_every_rule_with_an_action_declares_conda_log_threads_resources():
    envs = {"ENV_TORCH": "torch.yaml", "ENV_STATS": "stats.yaml"}
    common = (ROOT / "rules" / "common.smk").read_text()
    for const, file in envs.items():
        assert re.search(rf'^{const} = "\.\./envs/{file}"$', common, flags=re.M), f"{const} must point to envs/{file}"
    checked = 0
    for rule, block in rule_blocks().items():
        found = directives(block)
        if not found & set(ACTIONS):
            assert rule == "all", f"rule {rule} has no script/shell/run"
            continue
        missing = [d for d in DIRECTIVES if d not in found]
        assert not missing, f"rule {rule} lacks {', '.join(d + ':' for d in missing)}"
        env = re.search(r"^ {4}conda:\s*(\S+)", block, flags=re.M)[1]
        assert env in envs, f"rule {rule}: conda: {env} is neither ENV_TORCH nor ENV_STATS"
        checked += 1
    assert checked == len(rule_blocks()) - 1
