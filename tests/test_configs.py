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
