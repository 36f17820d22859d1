"""Constants of the PASCAL VOC devkit that both the readers (evaluate/datasets.py) and the embedded
world's writer (bench/world/voc.py) follow."""
from __future__ import annotations

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")  # the devkit's order (alphabetical)


def voc_palette() -> list[int]:
    """The VOC colour map (256 RGB entries, flattened), as the devkit's VOClabelcolormap builds it."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette
