"""pyproject.toml and environment.yml name the same dependencies; the README opens right."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("dev", "cluster"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        else:
            conda.add(_name(dep))
    conda -= {"python", "pip"}
    assert wanted == conda | pip, (wanted - (conda | pip), (conda | pip) - wanted)
    assert "conda-forge" in env["channels"]


def test_readme_opens_with_the_two_commands_and_ci_calls_the_test_one():
    lines = [x for x in (ROOT / "README.md").read_text().splitlines() if x.strip()]
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert [b.split("#")[0].strip() for b in block] == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
