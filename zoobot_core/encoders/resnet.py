"""timm's ResNet (`resnet18` .. `resnet101` in `timm/models/resnet.py`, He et al. 2016) in Keras, up to its pooled features.

The block kind (BasicBlock for 18/34, Bottleneck for 50/101), blocks per stage and widths are read from the
state dict, so the same code builds the published sizes and the shrunken networks timm makes with
`create_model('resnet18', layers=..., channels=...)`. Strides are not in the weights: they are timm's default
(output_stride 32): stem conv 2, max pool 2, stages 1, 2, 2, 2, the stride on the first block of a stage (a
BasicBlock's conv1, a Bottleneck's 3x3 conv2), whose shortcut is then a 1x1 conv + BatchNorm (`downsample`)
wherever the stride or the width changes. Only timm's default ResNet is built: the 7x7 stem, no deep stem
(resnet*c/d/s/t), no average-pool shortcut, no groups (ResNeXt), squeeze-excite or anti-aliasing, no
classifier; anything else is refused by name.

Every conv k x k pads k // 2 zeros on each side, also at stride 2 (Keras' 'same' pads stride-2 layers
asymmetrically); the stem's max pool pads 1 with zeros, which equals torch's -inf padding because it
follows a ReLU (every window holds a real value >= 0). BatchNorm has torch's eps 1e-5, the activation is
ReLU, and images go in unscaled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from zoobot_core.encoders.layers import IGNORED, StagedSpec, StateDictError, batchnorm, module_keys, padded_conv

FAMILY = "resnet"
STAGE_STRIDES = (1, 2, 2, 2)  # timm's make_blocks at output_stride 32; the stem conv and max pool have stride 2 each
BOTTLENECK_EXPANSION = 4  # a Bottleneck's output width is its 3x3 conv's width x 4 (base_width 64)
# timm's published sizes (block kind, blocks per stage); every one has the 64-wide stem and widths 64 .. 512
# (x 4 out of a Bottleneck): what config.json's architecture name promises
SIZES = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
STEM_WIDTH = 64
PLANES = (64, 128, 256, 512)


@dataclass(frozen=True)
class BlockSpec:
    """One block as its weights say: input width, each conv's output width (the last is the block's), stride."""

    in_chs: int
    conv_chs: tuple[int, ...]
    stride: int

    @property
    def mid_chs(self) -> int:
        return self.conv_chs[-2]  # the 3x3 conv's width (a Bottleneck's conv2, a BasicBlock's conv1)

    @property
    def out_chs(self) -> int:
        return self.conv_chs[-1]

    @property
    def has_downsample(self) -> bool:
        return self.stride != 1 or self.in_chs != self.out_chs


@dataclass(frozen=True)
class ResNetSpec(StagedSpec):
    """A timm ResNet as its weights say: block kind ('basic' or 'bottleneck'), stem width, the blocks of its four stages."""

    kind: str
    stages: tuple[tuple[BlockSpec, ...], ...]
    stem_chs: int
    in_chans: int = 3

    @property
    def mid_widths(self) -> tuple[int, ...]:
        return tuple(stage[-1].mid_chs for stage in self.stages)

    @property
    def num_features(self) -> int:
        return self.widths[-1]




def _convs(kind: str) -> tuple[tuple[str, int], ...]:
    """A block's convs (name, kernel) in order; each is followed by the BatchNorm of the same number."""
    return (("conv1", 3), ("conv2", 3)) if kind == "basic" else (("conv1", 1), ("conv2", 3), ("conv3", 1))


def _strided(kind: str) -> str:
    """The conv that has a block's stride: a BasicBlock's first 3x3, a Bottleneck's 3x3 conv2 (ResNet 'v1.5', as timm and torchvision)."""
    return "conv1" if kind == "basic" else "conv2"


def _block_keys(prefix: str, kind: str, block: BlockSpec) -> list[str]:
    """The state-dict keys timm's BasicBlock or Bottleneck holds, with its downsample conv + BatchNorm where it has one."""
    keys = []
    for i, _ in enumerate(_convs(kind), start=1):
        keys += module_keys(f"{prefix}.conv{i}", "conv") + module_keys(f"{prefix}.bn{i}", "bn")
    if block.has_downsample:
        keys += module_keys(f"{prefix}.downsample.0", "conv") + module_keys(f"{prefix}.downsample.1", "bn")
    return keys


def _conv_shape(state: dict[str, np.ndarray], key: str, in_chs: int, kernel: int) -> int:
    """The output width of a bias-free `kernel` x `kernel` conv that must take `in_chs` channels (no groups)."""
    if key not in state:
        raise StateDictError(f"Only timm's default ResNet layout is built here; this state dict lacks {key}")
    shape = tuple(int(n) for n in np.shape(state[key]))
    if len(shape) != 4 or shape[2:] != (kernel, kernel) or shape[1] != in_chs:
        grouped = " (a grouped conv, as in ResNeXt, is not built here)" if len(shape) == 4 and shape[1] != in_chs and in_chs % shape[1] == 0 else ""
        raise StateDictError(f"{key} has shape {shape}; timm's ResNet has a {kernel}x{kernel} conv from {in_chs} channels there{grouped}")
    return shape[0]


def _block(state: dict[str, np.ndarray], prefix: str, kind: str, in_chs: int, stride: int) -> BlockSpec:
    """One block's widths from its conv shapes, checked against the block before it."""
    chs, widths = in_chs, []
    for name, kernel in _convs(kind):
        chs = _conv_shape(state, f"{prefix}.{name}.weight", chs, kernel)
        widths.append(chs)
    block = BlockSpec(in_chs, tuple(widths), stride)
    if block.has_downsample:
        key = f"{prefix}.downsample.0.weight"
        if key not in state:
            raise StateDictError(
                f"{prefix} changes stride or width ({in_chs} -> {block.out_chs} channels, stride {stride}) but has no {key}: "
                "only timm's 1x1 conv + BatchNorm shortcut (no average-pool shortcut, avg_down) is built here"
            )
        if _conv_shape(state, key, in_chs, 1) != block.out_chs:
            raise StateDictError(f"{key} has shape {tuple(np.shape(state[key]))}; its block outputs {block.out_chs} channels")
    return block


def spec_from_state(state: dict[str, np.ndarray]) -> ResNetSpec:
    """The timm ResNet a state dict holds; StateDictError naming what differs for variants not built here."""
    keys = {key for key in state if key.rpartition(".")[2] not in IGNORED}
    if any(key.startswith("fc.") for key in keys):
        raise StateDictError("This state dict has a classifier (fc.weight); only the encoder (num_classes=0) is built here")
    if any(key.startswith("conv1.") and key != "conv1.weight" for key in keys):
        raise StateDictError(
            f"This state dict has a deep stem ({sorted(k for k in keys if k.startswith('conv1.'))[:3]}, as timm's resnet*c/d/s/t); "
            "only the single 7x7 conv stem (conv1.weight) is built here"
        )
    if any(key.startswith("maxpool.") for key in keys):
        raise StateDictError("This state dict has weights in its stem pool (maxpool.*, replace_stem_pool); only the max pool is built here")
    stem = tuple(int(n) for n in np.shape(state.get("conv1.weight", ())))
    if len(stem) != 4 or stem[2:] != (7, 7):
        raise StateDictError(f"timm's ResNet stem is a 7x7 conv (conv1.weight); this state dict has {stem or 'no conv1.weight'}")
    blocks: dict[int, int] = {}
    for key in keys:
        match = re.match(r"layer(\d+)\.(\d+)\.", key)
        if match:
            stage, block = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    if sorted(blocks) != list(range(1, len(STAGE_STRIDES) + 1)):
        raise StateDictError(f"timm's ResNet has layer1 .. layer{len(STAGE_STRIDES)}; this state dict has layers {sorted(blocks)}")
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    stages, chs = [], stem[0]
    for i, stride in enumerate(STAGE_STRIDES, start=1):
        stage = []
        for j in range(blocks[i]):
            stage.append(_block(state, f"layer{i}.{j}", kind, chs, stride if j == 0 else 1))
            chs = stage[-1].out_chs
        stages.append(tuple(stage))
    spec = ResNetSpec(kind=kind, stages=tuple(stages), stem_chs=stem[0], in_chans=stem[1])
    expected = set(module_keys("conv1", "conv") + module_keys("bn1", "bn"))
    for i, stage in enumerate(spec.stages, start=1):
        for j, block in enumerate(stage):
            expected.update(_block_keys(f"layer{i}.{j}", kind, block))
    extra, missing = sorted(keys - expected), sorted(expected - keys)
    if extra or missing:
        found = [f"tensors timm's default ResNet does not have: {extra[:6]}" if extra else "", f"no {missing[:6]}" if missing else ""]
        raise StateDictError(
            f"Not timm's default ResNet layout ({kind} blocks, BatchNorm, bias-free convs, no squeeze-excite): {'; '.join(f for f in found if f)}"
        )
    return spec


def check_architecture(spec: ResNetSpec, architecture: str) -> list[str]:
    """How the weights differ from timm's published `architecture` (empty when they match or the name has no published size)."""
    if architecture not in SIZES:
        return []
    kind, depths = SIZES[architecture]
    expansion = BOTTLENECK_EXPANSION if kind == "bottleneck" else 1
    wanted = {"block": kind, "depths": depths, "stem width": STEM_WIDTH, "widths": tuple(p * expansion for p in PLANES), "inner widths": PLANES}
    found = {"block": spec.kind, "depths": spec.depths, "stem width": spec.stem_chs, "widths": spec.widths, "inner widths": spec.mid_widths}
    return [f"{key} {found[key]} (timm's {architecture}: {wanted[key]})" for key in wanted if found[key] != wanted[key]]




def _apply_block(x, kind: str, block: BlockSpec, name: str):
    """timm's BasicBlock (3x3 conv1 with the stride, bn1, ReLU, 3x3 conv2, bn2) or Bottleneck (1x1 conv1, bn1, ReLU,
    3x3 conv2 with the stride, bn2, ReLU, 1x1 conv3, bn3), plus the shortcut (downsample conv + BN where it has one), then ReLU."""
    shortcut = x
    convs = _convs(kind)
    for i, ((conv, kernel), filters) in enumerate(zip(convs, block.conv_chs), start=1):
        x = padded_conv(x, filters, kernel, block.stride if conv == _strided(kind) else 1, f"{name}_{conv}")
        x = batchnorm(x, f"{name}_bn{i}")
        if i < len(convs):
            x = layers.ReLU(name=f"{name}_act{i}")(x)
    if block.has_downsample:
        shortcut = layers.Conv2D(block.out_chs, 1, strides=block.stride, use_bias=False, name=f"{name}_downsample_0")(shortcut)
        shortcut = batchnorm(shortcut, f"{name}_downsample_1")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_act{len(convs)}")(x)


def build(spec: ResNetSpec, input_shape: tuple[int | None, int | None, int], name: str = "timm_resnet50") -> keras.Model:
    """The ResNet from images (H, W, in_chans) in [0, 1] to its pooled features (num_features), random weights."""
    if input_shape[-1] != spec.in_chans:
        raise ValueError(f"This ResNet takes {spec.in_chans}-channel images, not {input_shape[-1]}")
    inputs = keras.Input(input_shape, name=f"{name}_input")
    x = padded_conv(inputs, spec.stem_chs, 7, 2, "conv1")
    x = batchnorm(x, "bn1")
    x = layers.ReLU(name="act1")(x)
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for i, stage in enumerate(spec.stages, start=1):
        for j, block in enumerate(stage):
            x = _apply_block(x, spec.kind, block, f"layer{i}_{j}")
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.Model(inputs, x, name=name)


def stage_of(layer_name: str) -> str:
    """The unit `unfreeze_blocks` counts: 'layer1' .. 'layer4', or 'stem' (conv1, bn1, the max pool, the input).

    ResNet has no head with weights (the global pool holds none), so `encoder_stages` lists no 'head'; the pool
    goes with 'layer4', whose output it averages."""
    match = re.match(r"(layer\d+)_", layer_name)
    if match:
        return match[1]
    return f"layer{len(STAGE_STRIDES)}" if layer_name == "global_pool" else "stem"
