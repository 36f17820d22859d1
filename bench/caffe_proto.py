"""Read Caffe models (.caffemodel weights, .prototxt architecture, .binaryproto mean images) without Caffe.

The schema is the subset of BVLC Caffe's src/caffe/proto/caffe.proto (package "caffe", proto2) that an
AlexNet-style model needs, with the field numbers, types, labels, packed options and defaults of the real
file. No protoc is available, so the subset is built here as a FileDescriptorProto and turned into message
classes in a private DescriptorPool (the default pool is left alone: another library may register its own
"caffe" package). Fields outside the subset are kept as unknown fields by the binary parser and skipped by
the text parser. `bench/caffe_subset.proto` is the same subset written as .proto text, for people to read
(tests/test_caffe_import.py checks it against `proto_text()`).

Extras beyond the weights and the AlexNet layer settings, because they change what a layer computes:
ReLUParameter.negative_slope (a leaky ReLU is not our trunk's ReLU) and InnerProductParameter.transpose
(the weight blob is stored (in, out) then).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError

PACKAGE = "caffe"
_FIELD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"int64": _FIELD.TYPE_INT64, "int32": _FIELD.TYPE_INT32, "uint32": _FIELD.TYPE_UINT32,
            "float": _FIELD.TYPE_FLOAT, "double": _FIELD.TYPE_DOUBLE, "bool": _FIELD.TYPE_BOOL,
            "string": _FIELD.TYPE_STRING}

# enum (full name inside the package) -> [(value name, number)], as in caffe.proto
ENUMS = {
    "PoolingParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "LRNParameter.NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)],
    "V1LayerParameter.LayerType": [
        ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2), ("CONCAT", 3),
        ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5), ("DECONVOLUTION", 39), ("DROPOUT", 6),
        ("DUMMY_DATA", 32), ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38), ("FLATTEN", 8), ("HDF5_DATA", 9),
        ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11), ("IMAGE_DATA", 12), ("INFOGAIN_LOSS", 13),
        ("INNER_PRODUCT", 14), ("LRN", 15), ("MEMORY_DATA", 29), ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34),
        ("POOLING", 17), ("POWER", 26), ("RELU", 18), ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27),
        ("SILENCE", 36), ("SOFTMAX", 20), ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33), ("TANH", 23),
        ("WINDOW_DATA", 24), ("THRESHOLD", 31)],
}

# V1LayerParameter.LayerType -> the LayerParameter type string (Caffe's UpgradeV1LayerType, upgrade_proto.cpp)
V1_LAYER_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
    "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power",
    "RELU": "ReLU", "SIGMOID": "Sigmoid", "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence", "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold"}

# message -> [(label, type, name, number, options)]; options: default (proto2 text form), packed
MESSAGES = {
    "BlobShape": [("repeated", "int64", "dim", 1, {"packed": True})],
    "BlobProto": [
        ("optional", "BlobShape", "shape", 7, {}),
        ("repeated", "float", "data", 5, {"packed": True}),
        ("repeated", "float", "diff", 6, {"packed": True}),
        ("repeated", "double", "double_data", 8, {"packed": True}),
        ("repeated", "double", "double_diff", 9, {"packed": True}),
        # 4D dimensions, deprecated in Caffe (use "shape"), still what old models hold
        ("optional", "int32", "num", 1, {"default": "0"}),
        ("optional", "int32", "channels", 2, {"default": "0"}),
        ("optional", "int32", "height", 3, {"default": "0"}),
        ("optional", "int32", "width", 4, {"default": "0"})],
    "NetParameter": [
        ("optional", "string", "name", 1, {}),
        ("repeated", "string", "input", 3, {}),
        ("repeated", "BlobShape", "input_shape", 8, {}),
        ("repeated", "int32", "input_dim", 4, {}),
        ("repeated", "LayerParameter", "layer", 100, {}),
        ("repeated", "V1LayerParameter", "layers", 2, {})],
    "LayerParameter": [
        ("optional", "string", "name", 1, {}),
        ("optional", "string", "type", 2, {}),
        ("repeated", "string", "bottom", 3, {}),
        ("repeated", "string", "top", 4, {}),
        ("repeated", "BlobProto", "blobs", 7, {}),
        ("optional", "TransformationParameter", "transform_param", 100, {}),
        ("optional", "ConvolutionParameter", "convolution_param", 106, {}),
        ("optional", "DropoutParameter", "dropout_param", 108, {}),
        ("optional", "InnerProductParameter", "inner_product_param", 117, {}),
        ("optional", "LRNParameter", "lrn_param", 118, {}),
        ("optional", "PoolingParameter", "pooling_param", 121, {}),
        ("optional", "ReLUParameter", "relu_param", 123, {}),
        ("optional", "InputParameter", "input_param", 143, {})],
    "V1LayerParameter": [
        ("repeated", "string", "bottom", 2, {}),
        ("repeated", "string", "top", 3, {}),
        ("optional", "string", "name", 4, {}),
        ("optional", "V1LayerParameter.LayerType", "type", 5, {}),
        ("repeated", "BlobProto", "blobs", 6, {}),
        ("optional", "ConvolutionParameter", "convolution_param", 10, {}),
        ("optional", "DropoutParameter", "dropout_param", 12, {}),
        ("optional", "InnerProductParameter", "inner_product_param", 17, {}),
        ("optional", "LRNParameter", "lrn_param", 18, {}),
        ("optional", "PoolingParameter", "pooling_param", 19, {}),
        ("optional", "ReLUParameter", "relu_param", 30, {}),
        ("optional", "TransformationParameter", "transform_param", 36, {})],
    "TransformationParameter": [
        ("optional", "float", "scale", 1, {"default": "1"}),
        ("optional", "bool", "mirror", 2, {"default": "false"}),
        ("optional", "uint32", "crop_size", 3, {"default": "0"}),
        ("optional", "string", "mean_file", 4, {}),
        ("repeated", "float", "mean_value", 5, {}),
        ("optional", "bool", "force_color", 6, {"default": "false"}),
        ("optional", "bool", "force_gray", 7, {"default": "false"})],
    "ConvolutionParameter": [
        ("optional", "uint32", "num_output", 1, {}),
        ("optional", "bool", "bias_term", 2, {"default": "true"}),
        ("repeated", "uint32", "pad", 3, {}),  # defaults to 0 (in the code, not the schema)
        ("repeated", "uint32", "kernel_size", 4, {}),
        ("repeated", "uint32", "stride", 6, {}),  # defaults to 1 (in the code)
        ("repeated", "uint32", "dilation", 18, {}),  # defaults to 1 (in the code)
        ("optional", "uint32", "pad_h", 9, {"default": "0"}),
        ("optional", "uint32", "pad_w", 10, {"default": "0"}),
        ("optional", "uint32", "kernel_h", 11, {}),
        ("optional", "uint32", "kernel_w", 12, {}),
        ("optional", "uint32", "stride_h", 13, {}),
        ("optional", "uint32", "stride_w", 14, {}),
        ("optional", "uint32", "group", 5, {"default": "1"})],
    "DropoutParameter": [("optional", "float", "dropout_ratio", 1, {"default": "0.5"})],
    "InnerProductParameter": [
        ("optional", "uint32", "num_output", 1, {}),
        ("optional", "bool", "bias_term", 2, {"default": "true"}),
        ("optional", "bool", "transpose", 6, {"default": "false"})],
    "LRNParameter": [
        ("optional", "uint32", "local_size", 1, {"default": "5"}),
        ("optional", "float", "alpha", 2, {"default": "1"}),
        ("optional", "float", "beta", 3, {"default": "0.75"}),
        ("optional", "LRNParameter.NormRegion", "norm_region", 4, {"default": "ACROSS_CHANNELS"}),
        ("optional", "float", "k", 5, {"default": "1"})],
    "PoolingParameter": [
        ("optional", "PoolingParameter.PoolMethod", "pool", 1, {"default": "MAX"}),
        ("optional", "uint32", "pad", 4, {"default": "0"}),
        ("optional", "uint32", "pad_h", 9, {"default": "0"}),
        ("optional", "uint32", "pad_w", 10, {"default": "0"}),
        ("optional", "uint32", "kernel_size", 2, {}),
        ("optional", "uint32", "kernel_h", 5, {}),
        ("optional", "uint32", "kernel_w", 6, {}),
        ("optional", "uint32", "stride", 3, {"default": "1"}),
        ("optional", "uint32", "stride_h", 7, {}),
        ("optional", "uint32", "stride_w", 8, {}),
        ("optional", "bool", "global_pooling", 12, {"default": "false"})],
    "ReLUParameter": [("optional", "float", "negative_slope", 1, {"default": "0"})],
    "InputParameter": [("repeated", "BlobShape", "shape", 1, {})],
}


class CaffeImportError(ValueError):
    """A Caffe file that cannot be read, or a model that does not fit the trunk; the message names the file
    or layer."""


def _field_proto(message: str, label: str, type_: str, name: str, number: int, options: dict) -> _FIELD:
    field = _FIELD(name=name, number=number, json_name=name,
                   label=_FIELD.LABEL_REPEATED if label == "repeated" else _FIELD.LABEL_OPTIONAL)
    if type_ in _SCALARS:
        field.type = _SCALARS[type_]
    else:
        field.type = _FIELD.TYPE_ENUM if type_ in ENUMS else _FIELD.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{type_}"
    if "default" in options:
        field.default_value = options["default"]
    if options.get("packed"):
        field.options.packed = True
    return field


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The subset as a FileDescriptorProto (caffe_subset.proto, package "caffe", proto2)."""
    file = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package=PACKAGE, syntax="proto2")
    for message, fields in MESSAGES.items():
        proto = file.message_type.add(name=message)
        proto.field.extend(_field_proto(message, *f) for f in fields)
        for enum, values in ENUMS.items():
            owner, _, enum_name = enum.rpartition(".")
            if owner == message:
                proto.enum_type.add(name=enum_name).value.extend(
                    descriptor_pb2.EnumValueDescriptorProto(name=n, number=v) for n, v in values)
    return file


def proto_text() -> str:
    """The subset as .proto source text (what bench/caffe_subset.proto holds), rendered from MESSAGES/ENUMS."""
    lines = ['syntax = "proto2";', "", f"package {PACKAGE};"]
    for message, fields in MESSAGES.items():
        lines += ["", f"message {message} {{"]
        for enum, values in ENUMS.items():
            if enum.rpartition(".")[0] == message:
                lines += [f"  enum {enum.rpartition('.')[2]} {{"] + [f"    {n} = {v};" for n, v in values] + ["  }"]
        for label, type_, name, number, options in fields:
            opts = [f"{k} = {'true' if v is True else v}" for k, v in options.items()]
            type_ = type_.rpartition(".")[2] if type_.rpartition(".")[0] == message else type_
            lines.append(f"  {label} {type_} {name} = {number}{' [' + ', '.join(opts) + ']' if opts else ''};")
        lines.append("}")
    return "\n".join(lines) + "\n"


def _message_classes() -> dict:
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with another "caffe" package
    proto = file_descriptor()
    pool.AddSerializedFile(proto.SerializeToString())
    file = pool.FindFileByName(proto.name)
    return {name: message_factory.GetMessageClass(file.message_types_by_name[name]) for name in MESSAGES}


_CLASSES = _message_classes()
BlobShape = _CLASSES["BlobShape"]
BlobProto = _CLASSES["BlobProto"]
NetParameter = _CLASSES["NetParameter"]
LayerParameter = _CLASSES["LayerParameter"]
V1LayerParameter = _CLASSES["V1LayerParameter"]
TransformationParameter = _CLASSES["TransformationParameter"]
ConvolutionParameter = _CLASSES["ConvolutionParameter"]
PoolingParameter = _CLASSES["PoolingParameter"]
LRNParameter = _CLASSES["LRNParameter"]
InnerProductParameter = _CLASSES["InnerProductParameter"]
DropoutParameter = _CLASSES["DropoutParameter"]
ReLUParameter = _CLASSES["ReLUParameter"]
InputParameter = _CLASSES["InputParameter"]


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise CaffeImportError(f"{path}: no such {what}" + (" (a folder)" if path.is_dir() else ""))
    return path.read_bytes()


def _parse_binary(path, message_class, what: str):
    """message_class parsed from the binary protobuf file at path; CaffeImportError naming the file."""
    path = Path(path)
    data = _read_bytes(path, what)
    message = message_class()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        head = data[:16]
        raise CaffeImportError(f"{path}: not a Caffe {what} (a binary protobuf {message_class.DESCRIPTOR.name}); "
                               f"it does not parse ({e}); the file starts with {head!r}") from None
    return message


def read_caffemodel(path) -> NetParameter:
    """A .caffemodel (binary NetParameter with the weights as layer blobs, in `layer` or V1 `layers`)."""
    net = _parse_binary(path, NetParameter, "caffemodel")
    if not (len(net.layer) or len(net.layers)):
        # random bytes often parse as unknown fields: a file with no layers is not a model
        raise CaffeImportError(f"{path}: not a Caffe caffemodel: it parses as a binary NetParameter but holds no "
                               f"layers (a .prototxt or other file passed as the weights?)")
    if len(net.layers) and not any(v1.name or v1.type for v1 in net.layers):
        raise CaffeImportError(f"{path}: a Caffe V0 model (layers nested as `layers {{ layer {{ ... }} }}`), which "
                               f"is not read here; upgrade it with Caffe's tools/upgrade_net_proto_binary")
    return net


def read_binaryproto(path) -> BlobProto:
    """A .binaryproto (a single BlobProto, e.g. Caffe's imagenet_mean.binaryproto of shape (1, 3, H, W) BGR)."""
    blob = _parse_binary(path, BlobProto, "binaryproto mean file")
    if not (len(blob.data) or len(blob.double_data)):
        raise CaffeImportError(f"{path}: not a Caffe binaryproto blob: it parses as a BlobProto but holds no data")
    return blob


def read_prototxt(path) -> NetParameter:
    """A .prototxt (text NetParameter). Fields outside the subset (data_param, param {lr_mult}, include, weight
    fillers, ...) are skipped; syntax errors -> CaffeImportError naming the file and line."""
    path = Path(path)
    text = _read_bytes(path, "prototxt").decode("utf-8", errors="replace")
    net = NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as e:
        where, reason = e.GetLine(), str(e)
        if where is not None:
            prefix = f"{where}:{e.GetColumn()} : "
            reason = reason.removeprefix(prefix)
            where = f", line {where} column {e.GetColumn()}"
        raise CaffeImportError(f"{path}: not a valid Caffe prototxt{where or ''}: {reason}") from None
    return net


def blob_shape(blob: BlobProto) -> tuple[int, ...]:
    """The blob's shape: shape.dim, or the legacy (num, channels, height, width) with leading 1s dropped (Caffe's
    legacy 4-D blobs store an fc weight (out, in) as (1, 1, out, in) and a bias (out,) as (1, 1, 1, out))."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    dims = [blob.num, blob.channels, blob.height, blob.width]
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return tuple(int(d) for d in dims)


def blob_array(blob: BlobProto) -> np.ndarray:
    """The blob's values as a float32 array of `blob_shape(blob)` (from `data`, or `double_data`)."""
    shape = blob_shape(blob)
    count = int(np.prod(shape, dtype=np.int64))
    if len(blob.data):
        # upb's repeated fields hand numpy their buffer (__array__): one copy, 0.03-0.4 s for fc6's 38M floats
        values = np.array(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        values = np.zeros(0, dtype=np.float32)
    if values.size != count:
        raise CaffeImportError(f"blob of shape {shape} ({count} values) holds {values.size} values")
    return values.reshape(shape)
