"""Every shipped config is valid against the schema once merged over the embedded default."""

import jsonschema
import pytest
import yaml
from conftest import REPO

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        base[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "config").glob("*.yaml")) + ["../tests/configs/tiny.yaml"])
def test_config_is_valid(path):
    config = _merge(yaml.safe_load((REPO / "config/config.yaml").read_text()), yaml.safe_load((REPO / "config" / path).read_text()))
    jsonschema.validate(config, SCHEMA)


def test_the_gz_decals_config_is_the_paper_setting():
    config = yaml.safe_load((REPO / "config/gz_decals_dr5.yaml").read_text())
    assert config["catalog"]["tree"] == "gz_decals_dr5" and config["images"]["size"] == 300
    assert (config["train"]["resize_size"], config["train"]["crop_fraction"], config["train"]["greyscale"]) == (224, 0.75, True)
    assert (config["train"]["batch_size"], config["train"]["patience"], config["train"]["dropout_rate"]) == (128, 8, 0.2)


def test_the_workflow_catalog_file_describes_a_standardized_workflow():
    """The Snakemake workflow catalog lists 'standardized usage' workflows: workflow/Snakefile, config/README.md and
    .snakemake-workflow-catalog.yml with a usage section naming the deployment methods and whether reports work."""
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert set(usage["mandatory-flags"]) == {"desc", "flags"} and "--profile workflow/profiles/slurm" in usage["mandatory-flags"]["desc"]
    assert usage["software-stack-deployment"]["conda"] is True and usage["report"] is True
    assert (REPO / "workflow/Snakefile").is_file() and (REPO / "config/README.md").is_file() and (REPO / "workflow/profiles/slurm").is_dir()
    conda_env = REPO / "workflow/envs/zoobot.yaml"
    assert conda_env.is_file() and "GNU GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()[:200]


RUN_NAME = SCHEMA["properties"]["run_name"]


def _config_with_run_name(name: str) -> dict:
    config = _merge(yaml.safe_load((REPO / "config/config.yaml").read_text()), yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text()))
    return {**config, "run_name": name}


@pytest.mark.parametrize("name", ["..", ".", "...", "a/b", "../x", "/tmp", "a\\b", "", "~"])
def test_a_run_name_that_leaves_results_is_refused(name):
    """results/<run_name>/ must be a folder of its own inside results/: no '.', '..', path separators or empty names."""
    with pytest.raises(jsonschema.ValidationError) as raised:
        jsonschema.validate(_config_with_run_name(name), SCHEMA)
    assert list(raised.value.path) == ["run_name"] and raised.value.validator in ("pattern", "not")
    assert "only dots" in str(raised.value) and "results/" in str(raised.value)  # the description travels with the error


@pytest.mark.parametrize("name", ["gz_decals-v2.1", "demo", "tiny", "a", ".hidden", "v1..2", "run.", "_", "rings_efficientnet_u2_s3"])
def test_ordinary_run_names_are_accepted(name):
    jsonschema.validate(_config_with_run_name(name), SCHEMA)


def test_the_run_wildcard_allows_only_what_the_schema_allows():
    """The Snakefile's `run` wildcard constraint refuses the names the schema does, so no target path can reach results/../."""
    import re

    common = (REPO / "workflow/rules/common.smk").read_text()
    constraint = re.search(r'^wildcard_constraints:\n(?:\s+#.*\n|\s+\w+=.*\n)*?\s+run="([^"]+)"', common, re.M).group(1)
    for name in ["..", ".", "...", "a/b", "../x", "", "/tmp"]:
        assert re.fullmatch(constraint, name) is None, name
        assert re.search(RUN_NAME["pattern"], name) is None, name
    for name in ["gz_decals-v2.1", "demo", ".hidden", "v1..2"]:
        assert re.fullmatch(constraint, name) and re.search(RUN_NAME["pattern"], name), name


def test_a_dry_run_with_run_name_dot_dot_plans_nothing(tmp_path):
    """snakemake -n on run_name '..' stops at config validation, before any job under results/../ is planned."""
    import subprocess
    import sys

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text()), "run_name": ".."}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow/Snakefile"), "--directory", str(tmp_path / "work"),
         "--configfile", str(tmp_path / "bad.yaml"), "-n"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "results/../" not in output, output[-3000:]
    assert "'..'" in output and "run_name" in output and "only dots" in output
