"""What every timm port shares: the few layers Keras lacks, timm's module paths as Keras layer names,
and loading a timm state dict into a Keras network built that way.

A timm parameter `stages.1.blocks.0.conv_dw.weight` belongs to the Keras layer `stages_1_blocks_0_conv_dw`
(dots become underscores); a bare parameter such as ConvNeXt's `stages.1.blocks.0.gamma` belongs to the layer
named after the whole key, `stages_1_blocks_0_gamma`. `load_state_dict` converts each tensor to Keras' layout
by the layer's type and refuses a state dict with a tensor left over, a layer left unset or a shape that
disagrees, naming them.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
from keras import layers, ops

log = logging.getLogger(__name__)

IGNORED = ("num_batches_tracked",)  # BatchNorm's step counter: no part of what the network computes


class StateDictError(ValueError):
    """A state dict does not fit the network built for it (a tensor left over or missing, a shape that differs)."""


@keras.saving.register_keras_serializable(package="zoobot_core")
class LayerScale(layers.Layer):
    """x times a learnt per-channel scale (ConvNeXt's `gamma`, initialised small as timm does)."""

    def __init__(self, init_value: float = 1e-6, **kwargs) -> None:
        super().__init__(**kwargs)
        self.init_value = init_value

    def build(self, input_shape) -> None:
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer=keras.initializers.Constant(self.init_value), name="gamma")

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package="zoobot_core")
class ExactGELU(layers.Layer):
    """GELU with the error function, as torch's nn.GELU (keras.ops.gelu defaults to the tanh approximation)."""

    def call(self, x):
        return ops.gelu(x, approximate=False)


BN_EPS = 1e-5  # torch's BatchNorm2d default, which timm's EfficientNet and ResNet keep (Keras' default is 1e-3)
BN_MOMENTUM = 0.9  # torch's momentum 0.1 in Keras' convention (moving = momentum * moving + (1 - momentum) * batch)


class StagedSpec:
    """What a spec of stages of blocks (each block with an out_chs) shows: blocks and output width per stage."""

    stages: tuple[tuple, ...]

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(stage) for stage in self.stages)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(stage[-1].out_chs for stage in self.stages)


def module_keys(module: str, kind: str) -> list[str]:
    """The state-dict keys of one timm module: 'conv' (bias-free), 'conv_bias', or 'bn' (a BatchNorm)."""
    if kind == "bn":
        return [f"{module}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
    return [f"{module}.weight"] + ([f"{module}.bias"] if kind == "conv_bias" else [])


def padded_conv(x, filters: int, kernel: int, stride: int, name: str, depthwise: bool = False):
    """A bias-free conv with timm's symmetric zero padding ((stride - 1) + (kernel - 1)) // 2 (its get_padding; k // 2 for
    odd kernels), also at stride 2, where Keras' 'same' pads asymmetrically."""
    pad = ((stride - 1) + (kernel - 1)) // 2
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    if depthwise:
        return layers.DepthwiseConv2D(kernel, strides=stride, use_bias=False, name=name)(x)
    return layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=name)(x)


def batchnorm(x, name: str):
    """torch's BatchNorm2d (eps 1e-5) as Keras' layer."""
    return layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=name)(x)


def timm_layer_name(prefix: str) -> str:
    """The Keras layer name of a timm module path: 'stages.1.blocks.0.conv_dw' -> 'stages_1_blocks_0_conv_dw'."""
    return prefix.replace(".", "_")


def _keras_weights(layer, params: dict[str, np.ndarray], where: str) -> list[np.ndarray]:
    """One timm module's tensors in the order and layout of the Keras layer's weights."""

    def take(name: str) -> np.ndarray:
        if name not in params:
            raise StateDictError(f"{where}.{name} is missing from the state dict")
        return params.pop(name)

    if isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        out = [take("weight").transpose(2, 3, 0, 1)]
    elif isinstance(layer, layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
        out = [take("weight").transpose(2, 3, 1, 0)]
    elif isinstance(layer, layers.Dense):  # Linear (out, in) or a 1x1 conv (out, in, 1, 1) -> (in, out)
        weight = take("weight")
        out = [(weight[:, :, 0, 0] if weight.ndim == 4 else weight).T]
    elif isinstance(layer, layers.LayerNormalization):
        out = [take("weight"), take("bias")]
    elif isinstance(layer, layers.BatchNormalization):
        out = [take("weight"), take("bias"), take("running_mean"), take("running_var")]
    elif isinstance(layer, LayerScale):
        out = [take("gamma")]
    else:
        raise StateDictError(f"No conversion from timm for the Keras layer {layer.name} ({type(layer).__name__})")
    if getattr(layer, "use_bias", False) and not isinstance(layer, (layers.LayerNormalization, layers.BatchNormalization)):
        out.append(take("bias"))
    if params:
        raise StateDictError(f"{where} has tensors the Keras layer {layer.name} does not take: {sorted(params)}")
    return out


def load_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Set every weight of a network built with timm's module paths as layer names from a timm state dict.

    Every tensor (but BatchNorm's step counters) must land in a layer, every layer with weights must be
    set, and every shape must match; otherwise StateDictError names the tensors or layers concerned.
    """
    by_name = {layer.name: layer for layer in model.layers}
    grouped: dict[str, tuple[str, dict[str, np.ndarray]]] = {}
    leftover = []
    for key, value in state.items():
        prefix, _, param = key.rpartition(".")
        if param in IGNORED:
            continue
        # a module's parameter (conv_dw.weight -> layer conv_dw), or a bare parameter (gamma -> layer ..._gamma)
        where = prefix if timm_layer_name(prefix) in by_name else key
        if timm_layer_name(where) not in by_name:
            leftover.append(key)
            continue
        grouped.setdefault(timm_layer_name(where), (where, {}))[1][param] = np.asarray(value, np.float32)
    if leftover:
        raise StateDictError(f"{len(leftover)} tensors of the state dict have no layer in {model.name}: {leftover[:8]}{' ...' if len(leftover) > 8 else ''}")
    unset = [layer.name for layer in model.layers if layer.weights and layer.name not in grouped]
    if unset:
        raise StateDictError(f"{len(unset)} layers of {model.name} get no tensor from the state dict: {unset[:8]}{' ...' if len(unset) > 8 else ''}")
    for name, (where, params) in grouped.items():
        layer = by_name[name]
        values = _keras_weights(layer, params, where)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            raise StateDictError(f"{where}: the state dict's tensors have Keras shapes {[v.shape for v in values]}, the layer {name} takes {expected}")
        layer.set_weights(values)
