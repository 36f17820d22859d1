"""Caffe's files written by hand in its wire format (our own tiny protobuf encoder, independent of
bench/caffe_proto.py), for tests/test_caffe_import.py and the tests that need an imported Caffe model."""
from pathlib import Path

import numpy as np

# ---- protobuf wire format, by hand ------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as 64-bit two's complement (10 bytes), as protobuf writes int32/int64."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def field_varint(number: int, value: int) -> bytes:
    return key(number, 0) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def field_string(number: int, text: str) -> bytes:
    return field_bytes(number, text.encode())


def packed_floats(number: int, values: np.ndarray) -> bytes:
    """A packed repeated float: one length-delimited field of little-endian float32s."""
    return field_bytes(number, np.ascontiguousarray(values, dtype="<f4").tobytes())


def unpacked_floats(number: int, values: np.ndarray) -> bytes:
    """An unpacked repeated float: every value its own fixed32 field (key, 4 bytes), built in one numpy pass."""
    tag = np.frombuffer(key(number, 5), dtype=np.uint8)
    records = np.empty(values.size, dtype=[("key", np.uint8, (tag.size,)), ("value", "<f4")])
    records["key"] = tag
    records["value"] = values.ravel()
    return records.tobytes()


def blob(array: np.ndarray, legacy: bool = False, packed: bool = True) -> bytes:
    """BlobProto: shape (7: BlobShape, dim = 1 packed int64) or legacy num/channels/height/width (1-4, 4-D with
    leading 1s, as Caffe's V1 models store them), data = 5."""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(field_varint(n, d) for n, d in zip((1, 2, 3, 4), dims))
    else:
        head = field_bytes(7, field_bytes(1, b"".join(varint(d) for d in array.shape)))
    return head + (packed_floats(5, array) if packed else unpacked_floats(5, array))


def layer(name: str, type_: str, blobs=()) -> bytes:
    """LayerParameter: name 1, type 2 (string), blobs 7."""
    return field_string(1, name) + field_string(2, type_) + b"".join(field_bytes(7, b) for b in blobs)


def v1_layer(name: str, type_: int, blobs=()) -> bytes:
    """V1LayerParameter: name 4, type 5 (LayerType enum), blobs 6."""
    return field_string(4, name) + field_varint(5, type_) + b"".join(field_bytes(6, b) for b in blobs)


def net(name: str, layers, v1: bool = False) -> bytes:
    """NetParameter: name 1, layer 100 (LayerParameter) or layers 2 (V1LayerParameter)."""
    return field_string(1, name) + b"".join(field_bytes(2 if v1 else 100, lay) for lay in layers)


# V1LayerParameter.LayerType values (caffe.proto)
V1_TYPES = {"Data": 5, "Convolution": 4, "ReLU": 18, "Pooling": 17, "LRN": 15, "InnerProduct": 14, "Dropout": 6,
            "Softmax": 20, "Accuracy": 1, "SoftmaxWithLoss": 21}

# ---- a CaffeNet in Caffe's files --------------------------------------------------------------------------

# (our name, Caffe type, our name of the bottom, layer settings); ReLU and Dropout work in place, as in Caffe
CAFFENET = [
    ("conv1", "Convolution", "data", "convolution_param { num_output: 96 kernel_size: 11 stride: 4 }"),
    ("relu1", "ReLU", "conv1", ""),
    ("pool1", "Pooling", "conv1", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
    ("norm1", "LRN", "pool1", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }"),
    ("conv2", "Convolution", "norm1", "convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 }"),
    ("relu2", "ReLU", "conv2", ""),
    ("pool2", "Pooling", "conv2", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
    ("norm2", "LRN", "pool2", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }"),
    ("conv3", "Convolution", "norm2", "convolution_param { num_output: 384 pad: 1 kernel_size: 3 }"),
    ("relu3", "ReLU", "conv3", ""),
    ("conv4", "Convolution", "conv3", "convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 }"),
    ("relu4", "ReLU", "conv4", ""),
    ("conv5", "Convolution", "conv4", "convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 }"),
    ("relu5", "ReLU", "conv5", ""),
    ("pool5", "Pooling", "conv5", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
    ("fc6", "InnerProduct", "pool5", "inner_product_param { num_output: 4096 }"),
    ("relu6", "ReLU", "fc6", ""),
    ("drop6", "Dropout", "fc6", "dropout_param { dropout_ratio: 0.5 }"),
    ("fc7", "InnerProduct", "fc6", "inner_product_param { num_output: 4096 }"),
    ("relu7", "ReLU", "fc7", ""),
    ("drop7", "Dropout", "fc7", "dropout_param { dropout_ratio: 0.5 }"),
    ("fc8", "InnerProduct", "fc7", "inner_product_param { num_output: 1000 }"),
]
IN_PLACE = ("ReLU", "Dropout", "BatchNorm")
SHAPES = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3), "conv4": (384, 192, 3, 3),
          "conv5": (256, 192, 3, 3), "fc6": (4096, 9216), "fc7": (4096, 4096), "fc8": (1000, 4096)}
DEPLOY_HEAD = """name: "CaffeNet"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } }
}
"""
DEPLOY_TAIL = """layer {
  name: "prob"
  type: "Softmax"
  bottom: "fc8"
  top: "prob"
}
"""
V1_TRAIN_VAL_HEAD = """name: "CaffeNet"
layers {
  name: "data"
  type: DATA
  top: "data"
  top: "label"
  data_param {
    source: "examples/imagenet/ilsvrc12_val_lmdb"
    backend: LMDB
    batch_size: 50
  }
  transform_param {
    mirror: false
    crop_size: 227
    mean_file: "imagenet_mean.binaryproto"
  }
  include: { phase: TEST }
}
"""
V1_TRAIN_VAL_TAIL = """layers {
  name: "accuracy"
  type: ACCURACY
  bottom: "fc8"
  bottom: "label"
  top: "accuracy"
  include: { phase: TEST }
}
layers {
  name: "loss"
  type: SOFTMAX_LOSS
  bottom: "fc8"
  bottom: "label"
  top: "loss"
}
"""


def prototxt(names: dict[str, str] | None = None, v1: bool = False, head: str = DEPLOY_HEAD,
             tail: str = DEPLOY_TAIL, spec=CAFFENET) -> str:
    """CaffeNet's prototxt text in the style of bvlc_reference_caffenet (deploy or train_val); `names` renames
    layers (and so their blobs), `spec` replaces CAFFENET's layers."""
    names = names or {}

    def blob_name(step):
        return names.get(step, step)

    blocks = [head]
    for step, kind, bottom, settings in spec:
        top = blob_name(bottom) if kind in IN_PLACE else blob_name(step)
        type_line = f"type: {V1_LAYER_ENUMS[kind]}" if v1 else f'type: "{kind}"'
        learning = ""
        if kind in ("Convolution", "InnerProduct"):  # what real prototxts carry; outside the subset, so skipped
            learning = ("  blobs_lr: 1\n  blobs_lr: 2\n  weight_decay: 1\n  weight_decay: 0\n" if v1 else
                        "  param { lr_mult: 1 decay_mult: 1 }\n  param { lr_mult: 2 decay_mult: 0 }\n")
        blocks.append(f'{"layers" if v1 else "layer"} {{\n  name: "{blob_name(step)}"\n  {type_line}\n'
                      f'  bottom: "{blob_name(bottom)}"\n  top: "{top}"\n{learning}'
                      + (f"  {settings}\n" if settings else "") + "}\n")
    return "".join(blocks) + tail


V1_LAYER_ENUMS = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "Pooling": "POOLING", "LRN": "LRN",
                  "InnerProduct": "INNER_PRODUCT", "Dropout": "DROPOUT"}


def caffemodel(weights: dict, names: dict[str, str] | None = None, v1: bool = False,
               unpacked: tuple[str, ...] = ()) -> bytes:
    """A caffemodel of CaffeNet's layers in prototxt order, weighted layers holding (weight, bias) blobs; the
    blobs named in `unpacked` ("conv1.weight", "fc6.bias", ...) are written with unpacked floats. V1: legacy 4-D
    blob dims and the V1 layer fields."""
    names = names or {}
    layers = [v1_layer("data", V1_TYPES["Data"]) if v1 else layer("data", "Input")]
    for step, kind, _, _ in CAFFENET:
        blobs = ()
        if step in weights:
            w, b = weights[step]
            blobs = (blob(w, legacy=v1, packed=f"{step}.weight" not in unpacked),
                     blob(b, legacy=v1, packed=f"{step}.bias" not in unpacked))
        name = names.get(step, step)
        layers.append(v1_layer(name, V1_TYPES[kind], blobs) if v1 else layer(name, kind, blobs))
    return net("CaffeNet", layers, v1=v1)


def binaryproto_mean(mean: np.ndarray) -> bytes:
    """imagenet_mean.binaryproto's format: one BlobProto, legacy dims (1, 3, H, W), packed data."""
    return blob(mean[None], legacy=True)


def caffenet_weights(seed: int = 0) -> dict:
    """{step: (weight, bias)} float32 of CaffeNet's shapes (fc8 too), He-scaled so activations stay O(input)."""
    rng = np.random.default_rng(seed)
    out = {}
    for step, shape in SHAPES.items():
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        out[step] = (w, rng.standard_normal(shape[0], dtype=np.float32) * np.float32(0.1))
    return out


def write_caffenet(folder, seed: int = 0) -> tuple[Path, Path]:
    """A deploy prototxt and a caffemodel of a random CaffeNet in `folder`; (prototxt, caffemodel) paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "deploy.prototxt").write_text(prototxt())
    (folder / "caffenet.caffemodel").write_bytes(caffemodel(caffenet_weights(seed)))
    return folder / "deploy.prototxt", folder / "caffenet.caffemodel"
