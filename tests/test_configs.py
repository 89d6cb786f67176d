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
