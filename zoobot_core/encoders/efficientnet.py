"""timm's EfficientNet-B0 (`efficientnet_b0` in `timm/models/efficientnet.py`, Tan & Le 2019) in Keras, up to its pooled features.

The widths, blocks per stage, kernel sizes, expansion and squeeze-excite widths are read from the state dict, so
the same code builds the published b0 and the shrunken networks timm makes with `_gen_efficientnet('efficientnet_b0',
channel_multiplier=..., depth_multiplier=...)`. Strides are not in the weights: they are b0's arch_def (stages 1, 2,
2, 2, 1, 2, 1; the first block of a stage has the stride). Anything else (other block kinds, group convs, GroupNorm,
a classifier) is refused by name.

This is timm's own `efficientnet_b0`, not the TensorFlow port `tf_efficientnet_b0` that keras.applications matches:
every conv k x k pads k // 2 zeros on each side, also at stride 2 (Keras' 'same' pads stride-2 convs asymmetrically),
BatchNorm has torch's eps 1e-5 (and momentum 0.1, Keras' 0.9), the activation is SiLU, and images go in unscaled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from zoobot_core.encoders.layers import IGNORED, StagedSpec, StateDictError, batchnorm, module_keys, padded_conv

FAMILY = "efficientnet"
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)  # b0's arch_def; the stem conv has stride 2 as well
STAGE_KINDS = ("ds",) + ("ir",) * 6  # DepthwiseSeparableConv, then InvertedResidual
# timm's published efficientnet_b0: what config.json's architecture name promises
B0 = {
    "depths": (1, 2, 2, 3, 3, 4, 1),
    "stem width": 32,
    "widths": (16, 24, 40, 80, 112, 192, 320),
    "head width": 1280,
    "kernel sizes": (3, 3, 5, 3, 5, 5, 3),
}
B0_EXPANSION = 6  # InvertedResidual: expanded width = input width x 6
B0_SE_RATIO = 0.25  # squeeze-excite width = block input width x 0.25


@dataclass(frozen=True)
class BlockSpec:
    """One block as its weights say: kind ('ds' depthwise-separable or 'ir' inverted residual), widths, kernel, stride."""

    kind: str
    in_chs: int
    mid_chs: int  # the depthwise conv's width: in_chs x expansion for 'ir', in_chs for 'ds'
    out_chs: int
    se_chs: int
    kernel_size: int
    stride: int

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_chs == self.out_chs


@dataclass(frozen=True)
class EfficientNetSpec(StagedSpec):
    """An EfficientNet-B0-shaped network as its weights say: stem, the blocks of each of the seven stages, head width."""

    stages: tuple[tuple[BlockSpec, ...], ...]
    stem_chs: int
    num_features: int
    in_chans: int = 3
    stem_kernel: int = 3

    @property
    def kernel_sizes(self) -> tuple[int, ...]:
        return tuple(stage[0].kernel_size for stage in self.stages)




def _block_keys(prefix: str, kind: str) -> list[str]:
    """The state-dict keys timm's DepthwiseSeparableConv ('ds') or InvertedResidual ('ir') with squeeze-excite holds."""
    se = module_keys(f"{prefix}.se.conv_reduce", "conv_bias") + module_keys(f"{prefix}.se.conv_expand", "conv_bias")
    if kind == "ds":
        modules = [("conv_dw", "conv"), ("bn1", "bn"), ("conv_pw", "conv"), ("bn2", "bn")]
    else:
        modules = [("conv_pw", "conv"), ("bn1", "bn"), ("conv_dw", "conv"), ("bn2", "bn"), ("conv_pwl", "conv"), ("bn3", "bn")]
    return [key for module, what in modules for key in module_keys(f"{prefix}.{module}", what)] + se


def _shape(state: dict[str, np.ndarray], key: str, ndim: int = 4) -> tuple[int, ...]:
    if key not in state:
        raise StateDictError(f"Only timm's efficientnet_b0 layout is built here; this state dict lacks {key}")
    shape = tuple(int(n) for n in np.shape(state[key]))
    if len(shape) != ndim:
        raise StateDictError(f"{key} has shape {shape}; timm's efficientnet_b0 has a {ndim}-D tensor there")
    return shape


def _pointwise(state: dict[str, np.ndarray], key: str, in_chs: int) -> int:
    """The output width of a 1x1 conv that must take `in_chs` channels."""
    out, inp, kh, kw = _shape(state, key)
    if (kh, kw) != (1, 1) or inp != in_chs:
        raise StateDictError(f"{key} has shape {(out, inp, kh, kw)}; expected a 1x1 conv from {in_chs} channels")
    return out


def _block(state: dict[str, np.ndarray], prefix: str, kind: str, in_chs: int, stride: int) -> BlockSpec:
    """One block's widths and kernel from its tensors, checked against the block before it."""
    if kind == "ir":
        if f"{prefix}.conv_pwl.weight" not in state:
            raise StateDictError(f"{prefix} is not an InvertedResidual block (no conv_pwl) as in timm's efficientnet_b0")
        mid_chs = _pointwise(state, f"{prefix}.conv_pw.weight", in_chs)
    else:
        if f"{prefix}.conv_pwl.weight" in state:
            raise StateDictError(f"{prefix} is an InvertedResidual block; timm's efficientnet_b0 has a DepthwiseSeparableConv there")
        mid_chs = in_chs
    channels, per_group, kh, kw = _shape(state, f"{prefix}.conv_dw.weight")
    if channels != mid_chs or per_group != 1:
        raise StateDictError(
            f"{prefix}.conv_dw.weight has shape {(channels, per_group, kh, kw)}; expected a depthwise conv on {mid_chs} channels"
        )
    if kh != kw or kh % 2 == 0:
        raise StateDictError(f"{prefix}.conv_dw.weight has a {kh}x{kw} kernel; only odd square kernels are built here")
    se_chs = _pointwise(state, f"{prefix}.se.conv_reduce.weight", mid_chs)
    _pointwise(state, f"{prefix}.se.conv_expand.weight", se_chs)
    out_chs = _pointwise(state, f"{prefix}.conv_pwl.weight" if kind == "ir" else f"{prefix}.conv_pw.weight", mid_chs)
    return BlockSpec(kind, in_chs, mid_chs, out_chs, se_chs, kh, stride)


def spec_from_state(state: dict[str, np.ndarray]) -> EfficientNetSpec:
    """The EfficientNet-B0-shaped network a timm state dict holds; StateDictError naming what differs for variants not built here."""
    keys = {key for key in state if key.rpartition(".")[2] not in IGNORED}
    if any(key.startswith("classifier.") for key in keys):
        raise StateDictError("This state dict has a classifier (classifier.weight); only the encoder (num_classes=0) is built here")
    blocks: dict[int, int] = {}
    for key in keys:
        match = re.match(r"blocks\.(\d+)\.(\d+)\.", key)
        if match:
            stage, block = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    if sorted(blocks) != list(range(len(STAGE_STRIDES))):
        raise StateDictError(
            f"timm's efficientnet_b0 has blocks.0 .. blocks.{len(STAGE_STRIDES) - 1}; this state dict has blocks {sorted(blocks)}"
        )
    out, in_chans, kh, kw = _shape(state, "conv_stem.weight")
    if kh != kw or kh % 2 == 0:
        raise StateDictError(f"conv_stem.weight has a {kh}x{kw} kernel; only odd square kernels are built here")
    stages, chs = [], out
    for i, (stride, kind) in enumerate(zip(STAGE_STRIDES, STAGE_KINDS)):
        stage = []
        for j in range(blocks[i]):
            stage.append(_block(state, f"blocks.{i}.{j}", kind, chs, stride if j == 0 else 1))
            chs = stage[-1].out_chs
        stages.append(tuple(stage))
    spec = EfficientNetSpec(
        stages=tuple(stages), stem_chs=out, num_features=_pointwise(state, "conv_head.weight", chs), in_chans=in_chans, stem_kernel=kh
    )
    expected = set(module_keys("conv_stem", "conv") + module_keys("bn1", "bn") + module_keys("conv_head", "conv") + module_keys("bn2", "bn"))
    for i, stage in enumerate(spec.stages):
        for j, block in enumerate(stage):
            expected.update(_block_keys(f"blocks.{i}.{j}", block.kind))
    extra, missing = sorted(keys - expected), sorted(expected - keys)
    if extra or missing:
        found = [f"tensors timm's efficientnet_b0 does not have: {extra[:6]}" if extra else "", f"no {missing[:6]}" if missing else ""]
        raise StateDictError(
            f"Not timm's efficientnet_b0 layout (BatchNorm, squeeze-excite, bias-free convs): {'; '.join(f for f in found if f)}"
        )
    return spec


def check_architecture(spec: EfficientNetSpec, architecture: str) -> list[str]:
    """How the weights differ from timm's published `architecture` (empty when they match or the name is not efficientnet_b0)."""
    if architecture != "efficientnet_b0":
        return []
    found = {
        "depths": spec.depths,
        "stem width": spec.stem_chs,
        "widths": spec.widths,
        "head width": spec.num_features,
        "kernel sizes": spec.kernel_sizes,
    }
    differences = [f"{key} {found[key]} (timm's {architecture}: {B0[key]})" for key in B0 if found[key] != B0[key]]
    blocks = [block for stage in spec.stages for block in stage]
    expansions = sorted({block.mid_chs / block.in_chs for block in blocks if block.kind == "ir"})
    if expansions != [B0_EXPANSION]:
        differences.append(f"expansion ratios {expansions} (timm's {architecture}: {B0_EXPANSION})")
    if any(block.se_chs != round(block.in_chs * B0_SE_RATIO) for block in blocks):
        differences.append(
            f"squeeze-excite widths {[block.se_chs for block in blocks]} (timm's {architecture}: block input x {B0_SE_RATIO})"
        )
    return differences




def _bn(x, name: str, act: bool = True):
    """timm's BatchNormAct2d: BatchNorm (eps 1e-5), then SiLU unless act is False."""
    x = batchnorm(x, name)
    return layers.Activation("silu", name=f"{name}_act")(x) if act else x


def _squeeze_excite(x, channels: int, se_chs: int, name: str):
    """timm's SqueezeExcite: x times sigmoid(conv_expand(SiLU(conv_reduce(spatial mean of x))))."""
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = layers.Conv2D(se_chs, 1, name=f"{name}_conv_reduce")(s)
    s = layers.Activation("silu", name=f"{name}_act1")(s)
    s = layers.Conv2D(channels, 1, name=f"{name}_conv_expand")(s)
    s = layers.Activation("sigmoid", name=f"{name}_gate")(s)
    return layers.Multiply(name=f"{name}_mul")([x, s])


def _apply_block(x, block: BlockSpec, name: str):
    """timm's DepthwiseSeparableConv (conv_dw, bn1+SiLU, se, conv_pw, bn2) or InvertedResidual
    (conv_pw, bn1+SiLU, conv_dw, bn2+SiLU, se, conv_pwl, bn3), plus the input when stride 1 and widths match."""
    shortcut = x
    if block.kind == "ir":
        x = padded_conv(x, block.mid_chs, 1, 1, f"{name}_conv_pw")
        x = _bn(x, f"{name}_bn1")
    x = padded_conv(x, block.mid_chs, block.kernel_size, block.stride, f"{name}_conv_dw", depthwise=True)
    x = _bn(x, f"{name}_bn1" if block.kind == "ds" else f"{name}_bn2")
    x = _squeeze_excite(x, block.mid_chs, block.se_chs, f"{name}_se")
    if block.kind == "ir":
        x = padded_conv(x, block.out_chs, 1, 1, f"{name}_conv_pwl")
        x = _bn(x, f"{name}_bn3", act=False)
    else:
        x = padded_conv(x, block.out_chs, 1, 1, f"{name}_conv_pw")
        x = _bn(x, f"{name}_bn2", act=False)
    return layers.Add(name=f"{name}_add")([shortcut, x]) if block.has_skip else x


def build(spec: EfficientNetSpec, input_shape: tuple[int | None, int | None, int], name: str = "timm_efficientnet_b0") -> keras.Model:
    """The EfficientNet from images (H, W, in_chans) in [0, 1] to its pooled features (num_features), random weights."""
    if input_shape[-1] != spec.in_chans:
        raise ValueError(f"This EfficientNet takes {spec.in_chans}-channel images, not {input_shape[-1]}")
    inputs = keras.Input(input_shape, name=f"{name}_input")
    x = padded_conv(inputs, spec.stem_chs, spec.stem_kernel, 2, "conv_stem")
    x = _bn(x, "bn1")
    for i, stage in enumerate(spec.stages):
        for j, block in enumerate(stage):
            x = _apply_block(x, block, f"blocks_{i}_{j}")
    x = padded_conv(x, spec.num_features, 1, 1, "conv_head")
    x = _bn(x, "bn2")
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.Model(inputs, x, name=name)


def stage_of(layer_name: str) -> str:
    """The unit `unfreeze_blocks` counts: 'blocks_0' .. 'blocks_6', 'head' (conv_head, bn2, pooling) or 'stem' (conv_stem, bn1)."""
    match = re.match(r"(blocks_\d+)_", layer_name)
    if match:
        return match[1]
    return "head" if layer_name.startswith(("conv_head", "bn2", "global_pool")) else "stem"
