"""The conda environments (envs/*.yaml, used with --use-conda) install the exact pins of
pyproject.toml, every rule declares the directives that --use-conda and the cluster need, and
every module a rule's script imports (followed through memplast, parsed with ast) is in its env."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from packaging.specifiers import SpecifierSet

ENVS = {"ENV_TORCH": "torch.yaml", "ENV_STATS": "stats.yaml"}
DIRECTIVES = ("conda", "log", "threads", "resources")
ACTIONS = ("script", "shell", "run", "notebook", "wrapper")
# import name -> PyPI distribution, where they differ
DIST_OF = {"yaml": "pyyaml", "sklearn": "scikit-learn"}
# Imported only by code that runs in the Snakemake process (config validation), never in a job.
WORKFLOW_SIDE = {"snakemake", "jsonschema"}
# Optional extras, imported lazily only when their feature is enabled (config logging.wandb; a
# missing package then logs a warning and the job runs on): not in the rules' environments.
OPTIONAL = {"wandb"}


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pip_pins() -> dict[str, str]:
    pins = {}
    for dep in pyproject()["dependencies"]:
        name, sep, version = dep.partition("==")
        assert sep, f"pyproject.toml dependency {dep!r} is not pinned with =="
        pins[name.strip().lower()] = version.strip()
    return pins


def load_env(name: str) -> tuple[list[str], dict[str, str]]:
    """(conda packages, pip pins) of envs/<name>."""
    env = yaml.safe_load((ROOT / "envs" / name).read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"], f"envs/{name}: channels must be [conda-forge, nodefaults]"
    conda, pip = [], {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert list(dep) == ["pip"], f"envs/{name}: unexpected section {dep}"
            for line in dep["pip"]:
                name_, sep, version = line.partition("==")
                assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", version), (
                    f"envs/{name}: pip {line!r} is not name==version"
                )
                pip[name_.strip().lower()] = version
        else:
            conda.append(dep.strip())
    return conda, pip


@pytest.mark.parametrize("name", sorted(ENVS.values()))
def test_env_has_python_pip_and_the_pyproject_pins(name):
    conda, pip = load_env(name)
    assert "pip" in conda, f"envs/{name}: needs pip from conda-forge for its pip: section"
    pythons = [c for c in conda if c.startswith("python")]
    assert len(pythons) == 1 and re.fullmatch(r"python=\d+\.\d+", pythons[0]), f"envs/{name}: python={pythons}"
    # everything but python and pip comes from PyPI with pyproject's pins (so versions exist and agree)
    assert set(conda) == {"pip", pythons[0]}, f"envs/{name}: install {set(conda) - {'pip', pythons[0]}} in pip:"
    assert "matplotlib" not in conda  # from conda it would pull Qt: use matplotlib-base there
    pins = pip_pins()
    assert len(pip) > 5
    for dist, version in pip.items():
        assert dist in pins, f"envs/{name}: {dist} has no pin in pyproject.toml"
        assert version == pins[dist], f"envs/{name}: {dist}=={version} but pyproject.toml pins {dist}=={pins[dist]}"


@pytest.mark.parametrize("name", sorted(ENVS.values()))
def test_env_python_equals_requires_python(name):
    conda, _ = load_env(name)
    version = next(c for c in conda if c.startswith("python=")).split("=")[1]
    major, minor = map(int, version.split(".")[:2])
    spec = SpecifierSet(pyproject()["requires-python"])
    # requires-python admits exactly the python=X.Y series of the environment
    assert f"{major}.{minor}.0" in spec and f"{major}.{minor}.99" in spec, (name, version, spec)
    assert f"{major}.{minor - 1}.99" not in spec and f"{major}.{minor + 1}.0" not in spec, (name, version, spec)


# --------------------------------------------------------------------------- rules
def rule_blocks() -> dict[str, str]:
    """Rule name -> its text, for every `rule NAME:` in the Snakefile and rules/*.smk (a block ends
    at the next unindented line); a `use rule A as B with:` block is A's text with B's directives
    replacing A's."""
    blocks, derived = {}, []
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        text = path.read_text()
        for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|[ \t]*\n)*)", text, flags=re.M):
            assert m[1] not in blocks, f"rule {m[1]} defined twice"
            blocks[m[1]] = m[2]
        derived += re.findall(r"^use rule (\w+) as (\w+) with:\n((?:[ \t]+.*\n|[ \t]*\n)*)", text, flags=re.M)
    for base, name, body in derived:
        assert name not in blocks, f"rule {name} defined twice"
        blocks[name] = body + blocks[base]  # directives found first win (see directive())
    return blocks


def directives(block: str) -> set[str]:
    """The rule's directives: the keys at its first indentation level."""
    return set(re.findall(r"^ {4}(\w+):", block, flags=re.M))


def directive(block: str, key: str) -> str:
    """The first value line of directive ``key``."""
    return re.search(rf"^ {{4}}{key}:\s*\n?\s*(\S+)", block, flags=re.M)[1]


def test_block_parser_finds_every_rule_of_the_workflow():
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "snakemake"),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--list-rules",
            "--configfile",
            str(ROOT / "config.yaml"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    assert listed == set(rule_blocks()) and len(listed) > 20


# rules that only name files to build (no action): the default target and `snakemake tune`
TARGET_RULES = ("all", "tune")


def test_every_rule_with_an_action_declares_conda_log_threads_resources():
    common = (ROOT / "rules" / "common.smk").read_text()
    for const, file in ENVS.items():
        assert re.search(rf'^{const} = "\.\./envs/{file}"$', common, flags=re.M), f"{const} must point to envs/{file}"
    checked = 0
    for rule, block in rule_blocks().items():
        found = directives(block)
        if not found & set(ACTIONS):
            assert rule in TARGET_RULES, f"rule {rule} has no script/shell/run"
            continue
        missing = [d for d in DIRECTIVES if d not in found]
        assert not missing, f"rule {rule} lacks {', '.join(d + ':' for d in missing)}"
        env = directive(block, "conda")
        assert env in ENVS, f"rule {rule}: conda: {env} is neither of {sorted(ENVS)}"
        checked += 1
    assert checked == len(rule_blocks()) - len(TARGET_RULES)


# --------------------------------------------------------------------------- imports
class Imports:
    """Third-party top-level modules a script needs: the script's own imports (all of them: its
    main runs), the module-level imports of every memplast module it loads (transitively), and
    the imports inside memplast functions and classes it can reach by name from there."""

    def __init__(self):
        self.external: set[str] = set()
        self.modules: set[str] = set()
        self.funcs: set[tuple[str, str]] = set()
        self._trees: dict[str, ast.Module] = {}

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            path = ROOT / (module.replace(".", "/") + ".py")
            path = path if path.exists() else path.with_suffix("") / "__init__.py"
            self._trees[module] = ast.parse(path.read_text(), str(path))
        return self._trees[module]

    @staticmethod
    def _top_level_nodes(tree):
        """Nodes executed when the module is imported (not function bodies; class bodies are)."""
        stack = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                stack += node.decorator_list if hasattr(node, "decorator_list") else []
                continue
            yield node
            stack += list(ast.iter_child_nodes(node))

    def _aliases(self, module: str) -> tuple[dict, dict]:
        """Module-level (alias -> memplast module, name -> (memplast module, name)) of ``module``."""
        mods, names = {}, {}
        for node in self._top_level_nodes(self.tree(module)):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("memplast."):
                        mods[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "memplast":
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if (ROOT / (sub.replace(".", "/") + ".py")).exists():
                        mods[a.asname or a.name] = sub
                    else:
                        names[a.asname or a.name] = (node.module, a.name)
        return mods, names

    def _import(self, node, module: str) -> None:
        """Record one import statement found in ``module``."""
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                self.load(a.name) if top == "memplast" else self.external.add(top)
        elif node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top != "memplast":
                self.external.add(top)
                return
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if (ROOT / (sub.replace(".", "/") + ".py")).exists():
                    self.load(sub)
                else:
                    self.load(node.module)
                    self.use(node.module, a.name)

    def load(self, module: str) -> None:
        """Import ``module``: its module-level imports and the names its top level uses."""
        if module in self.modules:
            return
        self.modules.add(module)
        nodes = list(self._top_level_nodes(self.tree(module)))
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self._import(node, module)
        self._follow(module, nodes, top_level=True)

    def use(self, module: str, name: str) -> None:
        """Call ``module.name``: the imports inside it and whatever it references by name."""
        if (module, name) in self.funcs:
            return
        self.funcs.add((module, name))
        _, names = self._aliases(module)
        if name in names:
            self.load(names[name][0])
            self.use(*names[name])
            return
        for node in self.tree(module).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
                inner = list(ast.walk(node))
                for n in inner:
                    if isinstance(n, (ast.Import, ast.ImportFrom)):
                        self._import(n, module)
                self._follow(module, inner)

    def _follow(self, module: str, nodes, top_level: bool = False) -> None:
        mods, names = self._aliases(module)
        defined = {
            n.name
            for n in self.tree(module).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        for n in nodes:
            if isinstance(n, ast.Name) and not (top_level and n.id in defined and isinstance(n.ctx, ast.Store)):
                if n.id in defined:
                    self.use(module, n.id)
                elif n.id in names:
                    self.use(*names[n.id])
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in mods:
                self.load(mods[n.value.id])
                if n.attr in self._defined(mods[n.value.id]):
                    self.use(mods[n.value.id], n.attr)

    def _defined(self, module: str) -> set[str]:
        return {
            n.name
            for n in self.tree(module).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        } | set(self._aliases(module)[1])

    def script(self, path: Path) -> set[str]:
        """Distributions (PyPI names) the script needs."""
        module = str(path.relative_to(ROOT).with_suffix("")).replace("/", ".")
        self.modules.add(module)
        nodes = list(ast.walk(self.tree(module)))
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self._import(node, module)
        self._follow(module, nodes)
        third_party = self.external - set(sys.stdlib_module_names) - {"__future__"} - WORKFLOW_SIDE - OPTIONAL
        return {DIST_OF.get(m, m) for m in third_party}


def rule_scripts() -> dict[str, tuple[Path, str]]:
    """Rule -> (its script, its env file) for every rule with a script: directive."""
    out = {}
    for rule, block in rule_blocks().items():
        if "script" in directives(block):
            script = (ROOT / "rules" / directive(block, "script").strip('"')).resolve()
            out[rule] = (script, ENVS[directive(block, "conda")])
    return out


def test_every_rule_script_imports_only_what_its_env_installs():
    scripts = rule_scripts()
    assert len(scripts) == len(rule_blocks()) - len(TARGET_RULES)  # every rule but the targets runs a script
    envs = {f: set(load_env(f)[1]) for f in ENVS.values()}
    for rule, (script, env) in sorted(scripts.items()):
        needed = Imports().script(script)
        missing = needed - envs[env]
        assert not missing, f"rule {rule} ({script.name}) imports {sorted(missing)}, not in envs/{env}"


def test_import_analysis_follows_memplast_and_lazy_imports(tmp_path):
    """The analysis sees through memplast: memo_validation needs scikit-learn (via
    memplast.memo_validation), training needs torch (via memplast.train), and the digits loader's
    lazy sklearn import is found from the prepare script."""
    s = rule_scripts()
    assert "scikit-learn" in Imports().script(s["memo_validation"][0])
    assert {"torch", "numpy", "pandas", "pyarrow", "pyyaml"} <= Imports().script(s["train_task"][0])
    assert "scikit-learn" in Imports().script(s["prepare"][0])
    assert "torchvision" in Imports().script(s["download"][0])
    # a statistics-only rule does not reach torch
    assert "torch" not in Imports().script(s["stats_primary"][0])


def test_install_stops_before_pip_when_the_disk_is_too_small(tmp_path):
    """`make`'s install of .venv checks the free disk first (a full disk once ended a CI install in
    pip's `[Errno 28]`): asked for more than any disk has, it says so in one line, creates no venv and
    fails; asked for nothing, the check passes."""
    venv = tmp_path / "venv"
    make = ["make", "-s", "-C", str(ROOT), f"VENV={venv}", f"PYTHON={sys.executable}"]
    out = subprocess.run([*make, "DISK_GB=1e9", f"{venv}/.installed-stamp"], capture_output=True, text=True)
    assert out.returncode != 0 and not venv.exists()
    (line,) = [x for x in out.stderr.splitlines() if not x.startswith("make")]
    assert re.fullmatch(r"installing \.venv needs about 1e\+09 GB free on disk but found [\d.]+ GB free in \S+; "
                        r"free some space \(or set TMPDIR to a larger disk\) and run make again", line)  # fmt: skip
    ok = subprocess.run([sys.executable, str(ROOT / "scripts/check_disk.py"), "--need-gb", "0"], capture_output=True)
    assert ok.returncode == 0 and not ok.stderr
