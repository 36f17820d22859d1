"""Import a Caffe CaffeNet-style AlexNet (.prototxt + .caffemodel) as a "caffenet" checkpoint, without Caffe.

The prototxt must describe exactly what our trunk (pretrain/alexnet.py, CaffeNet(batch_norm=False)) computes,
in its order: conv1 relu pool1 norm1, conv2 relu pool2 norm2, conv3 relu, conv4 relu, conv5 relu pool5,
fc6 relu [dropout], fc7 relu [dropout], with the trunk's kernel sizes, strides, pads, groups, widths and LRN
settings (bvlc_reference_caffenet). Data/Input layers may come first; everything after fc7 (fc8, prob, loss,
accuracy) is ignored. BVLC AlexNet (bvlc_alexnet) normalises before pooling and is refused: our trunk pools
first. The i-th Convolution is our conv_i and the first two InnerProduct layers are fc6/fc7, whatever their
names; weights come from the caffemodel's layer of the same name (Caffe copies weights by name).

Input convention. A Caffe model takes BGR pixels in 0-255 minus a mean, times `scale`:
    caffe_input[c] = (255 * x_bgr[c] - mean_bgr[c]) * scale
Every evaluation here feeds RGB images in [0, 1] normalised as (x - mean) / std with the checkpoint's
extra.normalization. Flipping conv1's input channels (weight[:, ::-1]) makes the trunk take RGB, and
    mean = [m_R, m_G, m_B] / 255,   std = 1 / (255 * scale)
gives the very same conv1 input, so the imported trunk computes what the Caffe model computes.
Pooling: Caffe rounds pooled sizes up, our trunk rounds down; at 227x227 every pool divides exactly
(55 -> 27, 27 -> 13, 13 -> 6), so the two agree there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cpfs_bench.bench.caffe_proto import (
    V1_LAYER_TYPES,
    CaffeImportError,
    LRNParameter,
    PoolingParameter,
    V1LayerParameter,
    blob_array,
    read_binaryproto,
    read_caffemodel,
    read_prototxt,
)
from cpfs_bench.bench.checkpoint import save_checkpoint
from cpfs_bench.bench.files import sha256_file
from cpfs_bench.pretrain.alexnet import INPUT_SIZE, CaffeNet

ARCH = "caffenet"
# per-channel means (B, G, R; 0-255) of BVLC's data/ilsvrc12/imagenet_mean.binaryproto, the mean every BVLC
# ImageNet model was trained with; assumed when neither the prototxt nor the caller names one
BVLC_ILSVRC12_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
DATA_TYPES = ("Data", "Input", "ImageData", "DummyData", "MemoryData", "WindowData", "HDF5Data")
# our trunk as Caffe layers, in order: (our name, Caffe type); Dropout is optional (identity at evaluation)
TRUNK = (("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"), ("norm1", "LRN"),
         ("conv2", "Convolution"), ("relu2", "ReLU"), ("pool2", "Pooling"), ("norm2", "LRN"),
         ("conv3", "Convolution"), ("relu3", "ReLU"), ("conv4", "Convolution"), ("relu4", "ReLU"),
         ("conv5", "Convolution"), ("relu5", "ReLU"), ("pool5", "Pooling"),
         ("fc6", "InnerProduct"), ("relu6", "ReLU"), ("drop6", "Dropout"),
         ("fc7", "InnerProduct"), ("relu7", "ReLU"), ("drop7", "Dropout"))
OPTIONAL = ("Dropout",)
WEIGHTED = ("Convolution", "InnerProduct")


@dataclass
class Layer:
    """One prototxt layer, `layer` (LayerParameter) or V1 `layers` (V1LayerParameter), in one form."""

    name: str
    type: str  # LayerParameter's type string ("Convolution"); V1 enums are upgraded as Caffe does
    bottom: list[str]
    top: list[str]
    proto: object  # the LayerParameter / V1LayerParameter, for its *_param fields

    def param(self, field: str):
        """The layer's `field` message (its defaults where the prototxt does not set it)."""
        return getattr(self.proto, field)


def net_layers(net, path) -> list[Layer]:
    """The net's layers in prototxt order, from `layer` or the V1 `layers` (not both, as in Caffe)."""
    if len(net.layer) and len(net.layers):
        raise CaffeImportError(f"{path}: has both `layer` and V1 `layers` fields; Caffe refuses such a net too")
    if len(net.layer):
        return [Layer(p.name, p.type, list(p.bottom), list(p.top), p) for p in net.layer]
    return [Layer(p.name, V1_LAYER_TYPES[V1LayerParameter.LayerType.Name(p.type)], list(p.bottom), list(p.top), p)
            for p in net.layers]


def _fmt(value) -> str:
    """3 for (3, 3); "3x5" for (3, 5); numbers as they read."""
    if isinstance(value, tuple):
        return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _compare(layer: Layer, found: dict, expected: dict) -> None:
    """CaffeImportError naming the layer and the first setting that differs from our trunk's."""
    for key, want in expected.items():
        got = found[key]
        same = math.isclose(got, want, rel_tol=1e-5) if isinstance(want, float) else got == want
        if not same:
            raise CaffeImportError(f"{layer.name}: {key} {_fmt(got)}, our caffenet trunk has {_fmt(want)}")


def _pair(values, default: int) -> tuple[int, int]:
    """A repeated Caffe size (none, one or (h, w)) as (h, w)."""
    values = list(values)
    if not values:
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise CaffeImportError(f"{len(values)} values for a 2-D size")


def _conv_settings(layer: Layer) -> dict:
    """The Convolution layer's settings, resolved as Caffe's BaseConvolutionLayer does (x_h/x_w win)."""
    p = layer.param("convolution_param")
    try:
        if p.HasField("kernel_h") or p.HasField("kernel_w"):
            kernel = (p.kernel_h, p.kernel_w)
        elif len(p.kernel_size):
            kernel = _pair(p.kernel_size, 0)
        else:
            raise CaffeImportError("no kernel_size")
        stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") or p.HasField("stride_w") else _pair(p.stride, 1)
        pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else _pair(p.pad, 0)
        dilation = _pair(p.dilation, 1)
    except CaffeImportError as e:
        raise CaffeImportError(f"{layer.name}: convolution_param: {e}") from None
    return {"num_output": p.num_output, "kernel_size": kernel, "stride": stride, "pad": pad, "group": p.group,
            "dilation": dilation, "bias_term": p.bias_term}


def _check_conv(layer: Layer, conv: nn.Conv2d) -> None:
    _compare(layer, _conv_settings(layer), {
        "num_output": conv.out_channels, "kernel_size": tuple(conv.kernel_size), "stride": tuple(conv.stride),
        "pad": tuple(conv.padding), "group": conv.groups, "dilation": tuple(conv.dilation), "bias_term": True})


def _check_pool(layer: Layer, pool: nn.MaxPool2d) -> None:
    """Caffe's PoolingLayer: kernel_size wins over kernel_h/w; stride_h/pad_h win over stride/pad."""
    p = layer.param("pooling_param")
    kernel = (p.kernel_size, p.kernel_size) if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
    stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") or p.HasField("stride_w") else (p.stride, p.stride)
    pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else (p.pad, p.pad)
    found = {"pool": PoolingParameter.PoolMethod.Name(p.pool), "global_pooling": p.global_pooling,
             "kernel_size": kernel, "stride": stride, "pad": pad}
    _compare(layer, found, {"pool": "MAX", "global_pooling": False, "kernel_size": (pool.kernel_size,) * 2,
                            "stride": (pool.stride,) * 2, "pad": (pool.padding,) * 2})


def _check_lrn(layer: Layer, lrn: nn.LocalResponseNorm) -> None:
    # Caffe and torch both divide alpha by local_size: x / (k + alpha / n * sum(x^2)) ^ beta
    p = layer.param("lrn_param")
    found = {"norm_region": LRNParameter.NormRegion.Name(p.norm_region), "local_size": p.local_size,
             "alpha": p.alpha, "beta": p.beta, "k": p.k}
    _compare(layer, found, {"norm_region": "ACROSS_CHANNELS", "local_size": lrn.size, "alpha": float(lrn.alpha),
                            "beta": float(lrn.beta), "k": float(lrn.k)})


def _check_fc(layer: Layer, fc: nn.Linear) -> None:
    p = layer.param("inner_product_param")
    _compare(layer, {"num_output": p.num_output, "bias_term": p.bias_term},
             {"num_output": fc.out_features, "bias_term": True})


def _check_relu(layer: Layer, _module) -> None:
    _compare(layer, {"negative_slope": layer.param("relu_param").negative_slope}, {"negative_slope": 0.0})


CHECKS = {"Convolution": _check_conv, "Pooling": _check_pool, "LRN": _check_lrn, "InnerProduct": _check_fc,
          "ReLU": _check_relu, "Dropout": lambda layer, module: None}


class _TrunkLayout(CaffeNet):
    """CaffeNet without its weight initialisation: read for the layers' settings and shapes only."""

    def reset_parameters(self) -> None:
        pass  # normal_ on the meta device costs ~2 s the first time in a process (uniform_ does not)


def reference_trunk() -> CaffeNet:
    """Our trunk's layers, for their settings and shapes only: on the meta device (no memory, no random init)."""
    with torch.device("meta"):
        return _TrunkLayout(batch_norm=False)


def _trunk_module(trunk: CaffeNet, step: str) -> nn.Module | None:
    """Our trunk's module for a TRUNK step: conv1 -> Conv2d, norm1 -> LRN, relu1 -> None, ..."""
    if step.startswith(("relu", "drop")):
        return None
    module = getattr(trunk, step)
    return module[0] if isinstance(module, nn.Sequential) else module


def _wrong_layer(layer: Layer, step: str, kind: str) -> CaffeImportError:
    """The error for a layer that is not what our trunk computes at this point."""
    if layer.type == "LRN" and kind == "Pooling":
        return CaffeImportError(
            f"{layer.name}: LRN before pooling (BVLC AlexNet's conv-relu-norm-pool order); that order differs from "
            f"our caffenet trunk, which pools before normalising (conv-relu-pool-norm, bvlc_reference_caffenet)")
    return CaffeImportError(f"{layer.name}: a {layer.type or 'typeless'} layer where our caffenet trunk has "
                            f"{kind} ({step}); only CaffeNet-style AlexNets in our trunk's layer order are imported")


def match_trunk(layers: list[Layer], net, path) -> tuple[list[Layer], dict[str, Layer], list[Layer]]:
    """(leading data layers, {our step name: prototxt layer}, ignored layers after fc7), checking each layer's
    type, settings and bottom blob against our trunk; CaffeImportError naming the first layer that differs."""
    trunk = reference_trunk()
    i = 0
    while i < len(layers) and layers[i].type in DATA_TYPES:
        i += 1
    data = layers[:i]
    # the blob the next trunk layer must read: the image input (None where the prototxt names none)
    blob = net.input[0] if len(net.input) else (data[0].top[0] if data and data[0].top else None)
    matched, previous = {}, "the input"
    for step, kind in TRUNK:
        if i == len(layers) or layers[i].type != kind:
            if kind in OPTIONAL:
                continue
            if i == len(layers):
                raise CaffeImportError(f"{path}: the net ends after {previous}; our caffenet trunk continues with "
                                       f"{kind} ({step})")
            raise _wrong_layer(layers[i], step, kind)
        layer = layers[i]
        if blob is not None and layer.bottom != [blob]:
            raise CaffeImportError(f"{layer.name}: reads {layer.bottom}, our caffenet trunk feeds it only the output "
                                   f"of {previous} ({blob!r})")
        if len(layer.top) != 1:
            raise CaffeImportError(f"{layer.name}: has {len(layer.top)} outputs {layer.top}, expected one")
        CHECKS[kind](layer, _trunk_module(trunk, step))
        matched[step], blob, previous, i = layer, layer.top[0], layer.name, i + 1
    return data, matched, layers[i:]


def _input_sizes(net, data: list[Layer]) -> list[tuple[str, tuple[int, ...]]]:
    """(where, (N, C, H, W) or (H, W)) for every input size the prototxt states."""
    sizes = []
    if len(net.input_dim) >= 4:
        sizes.append(("input_dim", tuple(net.input_dim[:4])))
    if len(net.input_shape):
        sizes.append(("input_shape", tuple(net.input_shape[0].dim)))
    for layer in data:
        if layer.type == "Input" and len(layer.param("input_param").shape):
            sizes.append((f"{layer.name}: input_param shape", tuple(layer.param("input_param").shape[0].dim)))
        if layer.proto.HasField("transform_param") and layer.param("transform_param").crop_size:
            crop = layer.param("transform_param").crop_size
            sizes.append((f"{layer.name}: transform_param crop_size", (crop, crop)))
    return sizes


def check_input(net, data: list[Layer]) -> None:
    """CaffeImportError where the prototxt states an input other than 3 x 227 x 227."""
    for where, dims in _input_sizes(net, data):
        if len(dims) == 4 and dims[1] != 3:
            raise CaffeImportError(_not_rgb(where, dims[1]))
        if len(dims) >= 2 and tuple(dims[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise CaffeImportError(f"{where}: input size {dims[-2]}x{dims[-1]}, our caffenet trunk takes "
                                   f"{INPUT_SIZE}x{INPUT_SIZE} (its fc6 reads a 6x6 pool5)")


def _not_rgb(where: str, channels: int) -> str:
    return (f"{where}: the model takes {channels}-channel input, not a 3-channel colour image (e.g. a colorization "
            f"net reading the L of Lab); our evaluations feed RGB images, so it cannot be imported as a trunk")


def _weights_by_name(model, path) -> dict[str, list]:
    """{layer name: its blobs} for every caffemodel layer (either field) holding weights."""
    found = {}
    for layer in (*model.layer, *model.layers):
        if len(layer.blobs):
            if layer.name in found:
                raise CaffeImportError(f"{path}: two layers named {layer.name!r} hold weights; which one Caffe "
                                       f"would copy depends on the order, so the import refuses to guess")
            found[layer.name] = list(layer.blobs)
    return found


def _fit(array: np.ndarray, shape: tuple[int, ...], layer: str, what: str) -> np.ndarray:
    """array reshaped to `shape` where it only differs by leading 1s (legacy 4-D blobs), else CaffeImportError."""
    def squeezed(s):
        s = list(s)
        while len(s) > 1 and s[0] == 1:
            s.pop(0)
        return s

    if array.shape != shape and squeezed(array.shape) != squeezed(shape):
        raise CaffeImportError(f"{layer}: {what} blob has shape {array.shape}, our caffenet trunk needs {shape}")
    return array.reshape(shape)


def layer_weights(layer: Layer, blobs: list, module: nn.Module, step: str) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) float32 in torch's layouts: conv (out, in/groups, kh, kw) and Linear (out, in) are
    Caffe's own; an InnerProduct with transpose: true stores (in, out)."""
    if len(blobs) != 2:
        raise CaffeImportError(f"{layer.name}: {len(blobs)} weight blob(s) in the caffemodel, expected 2 "
                               f"(weights and bias)")
    try:
        weight, bias = blob_array(blobs[0]), blob_array(blobs[1])
    except CaffeImportError as e:
        raise CaffeImportError(f"{layer.name}: {e}") from None
    if step == "conv1" and weight.ndim == 4 and weight.shape[1] != 3:
        raise CaffeImportError(_not_rgb(f"{layer.name} (conv1, weights {weight.shape})", weight.shape[1]))
    shape = tuple(module.weight.shape)
    if layer.type == "InnerProduct" and layer.param("inner_product_param").transpose:
        weight = _fit(weight, shape[::-1], layer.name, "weight").T
    return _fit(weight, shape, layer.name, "weight"), _fit(bias, tuple(module.bias.shape), layer.name, "bias")


def trunk_state(matched: dict[str, Layer], model, caffemodel, flip_conv1: bool) -> dict[str, torch.Tensor]:
    """Our trunk's state_dict (conv1.0.weight ... fc7.0.bias) from the caffemodel's blobs, matched by layer name;
    conv1's input channels reversed (BGR -> RGB) when flip_conv1."""
    trunk = reference_trunk()
    by_name = _weights_by_name(model, caffemodel)
    state = {}
    for step, layer in matched.items():
        if layer.type not in WEIGHTED:
            continue
        if layer.name not in by_name:
            raise CaffeImportError(f"{layer.name}: no weights in {caffemodel} (Caffe copies weights by layer name; "
                                   f"its layers with weights are {sorted(by_name)})")
        weight, bias = layer_weights(layer, by_name[layer.name], _trunk_module(trunk, step), step)
        if step == "conv1" and flip_conv1:
            weight = weight[:, ::-1]  # the trunk then reads RGB where the Caffe model read BGR
        state[f"{step}.0.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{step}.0.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    missing = sorted(set(trunk.state_dict()) - set(state))
    assert not missing, f"match_trunk left trunk parameters unset: {missing}"
    return state


def _transform(layers: list[Layer], path):
    """The prototxt's TransformationParameter (None if no layer has one); layers that disagree -> error."""
    params = [(layer.name, layer.param("transform_param")) for layer in layers if layer.proto.HasField(
        "transform_param")]
    if not params:
        return None, None

    def key(p):
        return tuple(p.mean_value), p.mean_file, p.scale

    for name, p in params[1:]:
        if key(p) != key(params[0][1]):
            raise CaffeImportError(f"{path}: layers {params[0][0]!r} and {name!r} transform the input differently "
                                   f"(mean_value, mean_file or scale); pass --mean-values or --mean-file and --scale")
    return params[0]


def _mean_from_file(path: Path) -> list[float]:
    """The per-channel mean (model channel order, 0-255) of a binaryproto mean image (1, 3, H, W) or (3, H, W)."""
    mean = blob_array(read_binaryproto(path))
    while mean.ndim > 1 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.shape[0] != 3:
        raise CaffeImportError(f"{path}: a mean of shape {mean.shape}, expected 3 channels (1, 3, H, W)")
    return [float(v) for v in mean.reshape(3, -1).astype(np.float64).mean(axis=1)]


def _three(values, where: str) -> list[float]:
    """Caffe's mean_value: one value for every channel, or one per channel."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return values * 3
    if len(values) != 3:
        raise CaffeImportError(f"{where}: {len(values)} mean values; give 1 or 3 (one per channel)")
    return values


def input_convention(layers: list[Layer], prototxt: Path, mean_values=None, mean_file=None, scale=None,
                     channel_order=None) -> dict:
    """{channel_order, pixel_range, mean_values_bgr, mean_source, scale}: explicit arguments win, then the
    prototxt's transform_param, then the BVLC ILSVRC12 mean (assumed). mean_values / mean_file are in the model's
    channel order (B, G, R for Caffe models) in 0-255 units; a mean image is averaged per channel, as Fast R-CNN's
    PIXEL_MEANS (our evaluations resize images to many sizes, so no fixed-size mean image fits)."""
    order = (channel_order or "BGR").upper()
    if order not in ("BGR", "RGB"):
        raise CaffeImportError(f"channel_order {channel_order!r}: choose BGR (Caffe models) or RGB")
    if mean_values is not None and mean_file is not None:
        raise CaffeImportError("give mean values or a mean file, not both (Caffe refuses both too)")
    owner, transform = _transform(layers, prototxt)
    if transform is not None and len(transform.mean_value) and transform.mean_file:
        raise CaffeImportError(f"{prototxt}: layer {owner!r} sets both mean_value and mean_file; Caffe refuses that")
    if mean_values is not None:
        mean, source = _three(mean_values, "mean values"), "mean_value given at import"
    elif mean_file is not None:
        mean, source = _mean_from_file(Path(mean_file)), f"mean_file {mean_file} averaged per channel (given)"
    elif transform is not None and len(transform.mean_value):
        mean = _three(transform.mean_value, f"{prototxt}: {owner}")
        source = f"mean_value of the prototxt's transform_param (layer {owner!r})"
    elif transform is not None and transform.mean_file:
        path = _find_mean_file(transform.mean_file, prototxt)
        mean, source = _mean_from_file(path), f"mean_file {path} averaged per channel (the prototxt's, {owner!r})"
    else:
        mean = list(BVLC_ILSVRC12_MEAN_BGR) if order == "BGR" else list(BVLC_ILSVRC12_MEAN_BGR[::-1])
        source = ("assumed: BVLC's ILSVRC12 mean (imagenet_mean.binaryproto averaged per channel); neither the "
                  "prototxt nor the import named one")
    if scale is None:
        scale = transform.scale if transform is not None else 1.0
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise CaffeImportError(f"scale {scale}: must be a positive number")
    mean_bgr = mean if order == "BGR" else mean[::-1]
    return {"channel_order": order, "pixel_range": 255, "mean_values_bgr": mean_bgr, "mean_source": source,
            "scale": scale, "conv1_channels": "flipped BGR->RGB at import" if order == "BGR" else
            "unchanged (the model takes RGB)"}


def _find_mean_file(name: str, prototxt: Path) -> Path:
    """The prototxt's mean_file, as given (absolute or from the working folder) or relative to the prototxt."""
    for path in (prototxt.parent / name, Path(name)):
        if path.is_file():
            return path
    raise CaffeImportError(f"{prototxt}: its transform_param names mean_file {name!r}, which is neither next to the "
                           f"prototxt nor in the working folder; pass --mean-file PATH or --mean-values B,G,R")


def normalization(convention: dict) -> dict:
    """extra.normalization for RGB [0, 1] input: (x - mean) / std == (255 x - m) * scale per channel."""
    b, g, r = convention["mean_values_bgr"]
    std = 1.0 / (255.0 * convention["scale"])
    return {"mean": [r / 255.0, g / 255.0, b / 255.0], "std": [std] * 3}


def import_caffe(prototxt, caffemodel, out, mean_values=None, mean_file=None, scale=None,
                 channel_order=None) -> Path:
    """Write a "caffenet" checkpoint at `out` from a Caffe CaffeNet-style AlexNet; returns its path.
    mean_values (1 or 3 floats, 0-255, model channel order), mean_file (binaryproto), scale (Caffe's
    transform_param scale) and channel_order ("BGR" default, "RGB" for models converted from other frameworks)
    override what the prototxt says; CaffeImportError naming the file or layer that does not fit."""
    prototxt, caffemodel, out = Path(prototxt), Path(caffemodel), Path(out)
    if out.is_dir():
        raise CaffeImportError(f"{out}: is a folder; name the checkpoint file to write (e.g. {out}/caffenet.pt)")
    net = read_prototxt(prototxt)
    layers = net_layers(net, prototxt)
    if not layers:
        raise CaffeImportError(f"{prototxt}: a prototxt with no layers")
    data, matched, ignored = match_trunk(layers, net, prototxt)
    check_input(net, data)
    convention = input_convention(layers, prototxt, mean_values, mean_file, scale, channel_order)
    model = read_caffemodel(caffemodel)
    state = trunk_state(matched, model, caffemodel, flip_conv1=convention["channel_order"] == "BGR")
    del model  # the parsed caffemodel is as large as the file
    config = {"import": "caffe", "prototxt": str(prototxt.resolve()), "caffemodel": str(caffemodel.resolve()),
              "prototxt_sha256": sha256_file(prototxt), "caffemodel_sha256": sha256_file(caffemodel),
              "net_name": net.name, "prototxt_fields": "layer" if len(net.layer) else "layers (V1)",
              "layers": {step: layer.name for step, layer in matched.items()},
              "ignored_layers": [layer.name for layer in ignored],
              "arguments": {"mean_values": None if mean_values is None else [float(v) for v in mean_values],
                            "mean_file": None if mean_file is None else str(mean_file), "scale": scale,
                            "channel_order": channel_order}}
    return save_checkpoint(out, arch=ARCH, trunk=state, head={}, loss="caffe-import", step=0, config=config,
                           with_rng=False, extra={"normalization": normalization(convention),
                                                  "input_convention": convention})
