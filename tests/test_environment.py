"""The pinned environment: requirements.lock, the conda env file and pyproject agree."""

import re
import tomllib

import yaml
from conftest import REPO


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_the_lock_pins_every_dependency_of_the_project():
    lock = _pins((REPO / "requirements.lock").read_text().splitlines())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!\[ ]", d)[0].lower() for d in [*project["dependencies"], *project["optional-dependencies"]["cpu"]]]
    assert names and all(name in lock for name in names), [n for n in names if n not in lock]
    assert "zoobot-core" not in lock  # the project itself is installed from the checkout


def test_the_conda_env_pins_the_same_versions_as_the_lock():
    lock = _pins((REPO / "requirements.lock").read_text().splitlines())
    env = yaml.safe_load((REPO / "workflow/envs/zoobot.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = _pins(pip)
    assert {"tensorflow-cpu", "keras", "numpy", "pandas"} <= set(conda_pins)
    assert {name: lock.get(name) for name in conda_pins} == conda_pins


def test_rule_scripts_find_the_library_without_an_install():
    """Under --software-deployment-method conda, scripts import zoobot_core through this link."""
    link = REPO / "workflow/scripts/zoobot_core"
    assert link.is_symlink() and link.resolve() == (REPO / "zoobot_core").resolve()
