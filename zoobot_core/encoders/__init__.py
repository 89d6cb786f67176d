"""Zoobot 2's published encoders (timm networks pretrained on Galaxy Zoo) as Keras networks.

One module per architecture family, as timm keeps `models/`: `convnext` (pico to large),
`efficientnet` (timm's efficientnet_b0) and `resnet` (timm's resnet18, 34, 50 and 101), each building
the network from the shapes in its state dict with timm's module paths as layer names; `layers` loads
the weights into it; `weights` reads `model.safetensors` or `pytorch_model.bin` without torch; `hub`
finds a repo's files (Hugging Face cache or a local folder).

`load_encoder(folder, input_shape)` is the whole path: config.json's architecture, the weights, the
network. It takes images in [0, 1] (no ImageNet mean/std: Zoobot 2 uses none) with the channels the
weights expect (1 for the greyscale encoders) and returns the pooled features.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

PREFIX = "timm_"  # an encoder's Keras model is named timm_<architecture>
_FAMILY_MODULES = {
    "convnext": "zoobot_core.encoders.convnext",
    "efficientnet": "zoobot_core.encoders.efficientnet",
    "resnet": "zoobot_core.encoders.resnet",
}
BUILT = {
    "convnext": ("convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
    "efficientnet": ("efficientnet_b0",),
    "resnet": ("resnet18", "resnet34", "resnet50", "resnet101"),
}


# model_args keys that only set shapes the weights show (or nothing at inference); any other key is refused
SHAPE_ARGS = frozenset({"num_classes", "global_pool", "in_chans", "depths", "dims", "channel_multiplier", "depth_multiplier", "layers", "channels",
                        "drop_rate", "drop_path_rate"})


class ArchitectureError(ValueError):
    """config.json names an architecture not built here, or the weights do not fit it."""


@dataclass(frozen=True)
class EncoderInfo:
    """What a pipeline needs to know of an encoder before building it."""

    architecture: str
    family: str
    in_chans: int
    num_features: int
    folder: str


def built_architectures() -> list[str]:
    """Every timm architecture name this package can build."""
    return [name for names in BUILT.values() for name in names]


def family_of(architecture: str) -> str:
    """The family module's name for a timm architecture, or ArchitectureError listing those built."""
    for family, names in BUILT.items():
        if architecture in names:
            return family
    raise ArchitectureError(f"The encoder's architecture {architecture!r} is not built here; built: {', '.join(built_architectures())}")


def family_module(family: str) -> ModuleType:
    """The module that builds one family (imported on demand: it imports Keras)."""
    import importlib

    return importlib.import_module(_FAMILY_MODULES[family])


def _spec(folder: Path, state: dict) -> tuple[str, object, ModuleType]:
    from zoobot_core.encoders.hub import read_config
    from zoobot_core.encoders.layers import StateDictError

    config = read_config(folder)
    architecture = str(config["architecture"])
    module = family_module(family_of(architecture))
    try:
        spec = module.spec_from_state(state)
    except (StateDictError, KeyError) as err:
        raise ArchitectureError(f"{folder}: the weights are not a timm {architecture} this package builds ({err})") from err
    unknown = sorted(set(config.get("model_args") or {}) - SHAPE_ARGS)
    if unknown:  # timm arguments the weights do not show (norm eps, activation, padding type) would change the numbers unseen
        raise ArchitectureError(f"{folder}: config.json's model_args has {unknown}, which this package does not build; it takes only {sorted(SHAPE_ARGS)}")
    if (config.get("model_args") or {}).get("num_classes", 0) != 0 or (config.get("model_args") or {}).get("global_pool", "avg") != "avg":
        raise ArchitectureError(f"{folder}: only encoders without a classifier (num_classes 0) and with average pooling are built here")
    if not config.get("model_args"):  # a published repo: its weights must be the size its name promises
        differences = module.check_architecture(spec, architecture)
        if differences:
            raise ArchitectureError(f"{folder}: config.json says {architecture} but the weights have {'; '.join(differences)}")
    return architecture, spec, module


def describe_encoder(folder: str | Path) -> EncoderInfo:
    """The architecture, input channels and feature count of an encoder folder (reads its weights, builds nothing)."""
    from zoobot_core.encoders.weights import read_state_dict, weights_file

    folder = Path(folder)
    architecture, spec, module = _spec(folder, read_state_dict(weights_file(folder)))
    return EncoderInfo(architecture, module.FAMILY, int(spec.in_chans), int(spec.num_features), str(folder))


def encoder_fingerprint(folder: str | Path) -> dict:
    """What identifies an encoder's weights: architecture, folder, weights file and its SHA-256, and the Hugging Face
    commit when the folder is a snapshot of the cache (.../snapshots/<commit>)."""
    import hashlib

    from zoobot_core.encoders.hub import read_config
    from zoobot_core.encoders.weights import weights_file

    folder = Path(folder)
    weights = weights_file(folder)
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {
        "architecture": str(read_config(folder)["architecture"]), "folder": str(folder), "weights_file": weights.name,
        "weights_sha256": digest.hexdigest(), "hf_commit": folder.name if folder.parent.name == "snapshots" else None,
    }


def load_encoder(folder: str | Path, input_shape: tuple[int | None, int | None, int | None] = (None, None, None)):
    """The encoder in `folder` (config.json + weights) as a Keras model from images in [0, 1] to pooled features.

    input_shape's channels default to the weights' (3, or 1 for greyscale encoders).
    """
    from zoobot_core.encoders.layers import load_state_dict
    from zoobot_core.encoders.weights import read_state_dict, weights_file

    folder = Path(folder)
    state = read_state_dict(weights_file(folder))
    architecture, spec, module = _spec(folder, state)
    height, width, channels = input_shape
    model = module.build(spec, (height, width, channels or spec.in_chans), name=f"{PREFIX}{architecture}")
    load_state_dict(model, state)
    log.info("Loaded %s from %s: %d input channels, %d features", architecture, folder, spec.in_chans, spec.num_features)
    return model


def is_encoder_network(layer) -> bool:
    """Whether a Keras layer is an encoder built here (a nested timm_<architecture> model)."""
    return layer.name.startswith(PREFIX) and hasattr(layer, "layers")


def encoder_stages(network) -> list[str]:
    """The network's stages in order, as `unfreeze_blocks` counts them: 'stem', its stages or blocks, 'head'."""
    module = family_module(family_of(network.name[len(PREFIX):]))
    found = {module.stage_of(layer.name) for layer in network.layers if layer.weights}
    middle = sorted((s for s in found if s not in ("stem", "head")), key=lambda s: int(re.findall(r"\d+", s)[-1]))
    return [s for s in ("stem",) if s in found] + middle + [s for s in ("head",) if s in found]


def stage_of(network, layer_name: str) -> str:
    """The stage of one of an encoder's layers (see encoder_stages)."""
    return family_module(family_of(network.name[len(PREFIX):])).stage_of(layer_name)
