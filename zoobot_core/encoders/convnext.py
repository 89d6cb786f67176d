"""timm's ConvNeXt (`timm/models/convnext.py`, Liu et al. 2022) in Keras, up to its pooled features.

The structure is read from the state dict (depths, widths, kernel, the 1x1-conv or Linear MLP, input
channels), so the same code builds pico to large and the tiny test networks timm makes. Only what
Zoobot's encoders use is built: the 'patch' stem, layer scale, the norm after pooling
(`head_norm_first=False`), no GRN; anything else is refused by name.

timm's blocks in NCHW are Keras' in NHWC: its channels-first LayerNorm is Keras' LayerNormalization
over the last axis, a 1x1 convolution is a Dense layer on the channels. Every norm has eps 1e-6 and
GELU is the exact (erf) one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from zoobot_core.encoders.layers import ExactGELU, LayerScale, StateDictError

EPS = 1e-6
FAMILY = "convnext"
# timm's published sizes (depths, dims, conv_mlp): what config.json's architecture name promises
SIZES = {
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320), True),
    "convnext_femto": ((2, 2, 6, 2), (48, 96, 192, 384), True),
    "convnext_pico": ((2, 2, 6, 2), (64, 128, 256, 512), True),
    "convnext_nano": ((2, 2, 8, 2), (80, 160, 320, 640), True),
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768), False),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768), False),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024), False),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536), False),
}


@dataclass(frozen=True)
class ConvNextSpec:
    """A ConvNeXt's shape, as its weights say: blocks and width per stage, stem patch, kernel, MLP kind."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    in_chans: int = 3
    patch_size: int = 4
    kernel_size: int = 7
    mlp_ratio: int = 4
    conv_mlp: bool = True

    @property
    def num_features(self) -> int:
        return self.dims[-1]


def spec_from_state(state: dict[str, np.ndarray]) -> ConvNextSpec:
    """The ConvNeXt a timm state dict holds; StateDictError for variants not built here (other stems, GRN, norm before pooling)."""
    unsupported = [k for k in state if k.startswith(("norm_pre.", "head.fc.", "head.pre_logits.")) or ".grn." in k or k.startswith("stem.2")]
    if unsupported or "stem.0.weight" not in state or "head.norm.weight" not in state:
        raise StateDictError(
            "Only timm's ConvNeXt with the patch stem, no GRN and the norm after pooling (num_classes=0) is built here; "
            f"this state dict {'has ' + str(unsupported[:4]) if unsupported else 'lacks stem.0.weight or head.norm.weight'}"
        )
    blocks: dict[int, int] = {}
    for key in state:
        match = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", key)
        if match:
            stage, block = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    stages = range(len(blocks))
    if sorted(blocks) != list(stages):
        raise StateDictError(f"ConvNeXt stages are not numbered 0..n-1: {sorted(blocks)}")
    first = [f"stages.{i}.blocks.0" for i in stages]
    stem = state["stem.0.weight"]
    fc1 = state[f"{first[0]}.mlp.fc1.weight"]
    if any(f"{b}.gamma" not in state for b in first):
        raise StateDictError("Only ConvNeXt with layer scale (gamma) is built here (timm's default, ls_init_value 1e-6)")
    return ConvNextSpec(
        depths=tuple(blocks[i] for i in stages),
        dims=tuple(int(state[f"{b}.conv_dw.weight"].shape[0]) for b in first),
        in_chans=int(stem.shape[1]),
        patch_size=int(stem.shape[2]),
        kernel_size=int(state[f"{first[0]}.conv_dw.weight"].shape[-1]),
        mlp_ratio=int(fc1.shape[0]) // int(fc1.shape[1]),
        conv_mlp=fc1.ndim == 4,
    )


def check_architecture(spec: ConvNextSpec, architecture: str) -> list[str]:
    """How the weights differ from timm's published `architecture` (empty when they match or the name has no published size)."""
    if architecture not in SIZES:
        return []
    depths, dims, conv_mlp = SIZES[architecture]
    found = {"depths": spec.depths, "dims": spec.dims, "conv_mlp": spec.conv_mlp}
    wanted = {"depths": depths, "dims": dims, "conv_mlp": conv_mlp}
    return [f"{key} {found[key]} (timm's {architecture}: {wanted[key]})" for key in found if tuple(np.atleast_1d(found[key])) != tuple(np.atleast_1d(wanted[key]))]


def _norm(name: str) -> layers.Layer:
    return layers.LayerNormalization(epsilon=EPS, name=name)


def build(spec: ConvNextSpec, input_shape: tuple[int | None, int | None, int], name: str = "timm_convnext") -> keras.Model:
    """The ConvNeXt from images (H, W, in_chans) to its pooled, normed features (num_features), random weights."""
    if input_shape[-1] != spec.in_chans:
        raise ValueError(f"This ConvNeXt takes {spec.in_chans}-channel images, not {input_shape[-1]}")
    inputs = keras.Input(input_shape, name=f"{name}_input")
    x = layers.Conv2D(spec.dims[0], spec.patch_size, strides=spec.patch_size, name="stem_0")(inputs)
    x = _norm("stem_1")(x)
    for i, (depth, dim) in enumerate(zip(spec.depths, spec.dims)):
        if i > 0:
            x = _norm(f"stages_{i}_downsample_0")(x)
            x = layers.Conv2D(dim, 2, strides=2, name=f"stages_{i}_downsample_1")(x)
        for j in range(depth):
            block = f"stages_{i}_blocks_{j}"
            shortcut = x
            x = layers.DepthwiseConv2D(spec.kernel_size, padding="same", name=f"{block}_conv_dw")(x)
            x = _norm(f"{block}_norm")(x)
            x = layers.Dense(dim * spec.mlp_ratio, name=f"{block}_mlp_fc1")(x)
            x = ExactGELU(name=f"{block}_mlp_act")(x)
            x = layers.Dense(dim, name=f"{block}_mlp_fc2")(x)
            x = LayerScale(name=f"{block}_gamma")(x)
            x = layers.Add(name=f"{block}_add")([shortcut, x])
    x = layers.GlobalAveragePooling2D(name="head_global_pool")(x)
    x = _norm("head_norm")(x)
    return keras.Model(inputs, x, name=name)


def stage_of(layer_name: str) -> str:
    """The unit `unfreeze_blocks` counts: 'stages_0' .. 'stages_3' (downsampling with its stage), 'stem', or 'head' (the final norm)."""
    match = re.match(r"(stages_\d+)_", layer_name)
    if match:
        return match[1]
    return "head" if layer_name.startswith("head_") else "stem"
