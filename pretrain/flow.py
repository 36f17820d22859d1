"""Optical-flow estimation for `bench flow` (OpenCV DIS or Farneback) and its error measure."""
from __future__ import annotations

import cv2
import numpy as np

from cpfs_bench.pretrain.configs import FLOW_METHODS

METHODS = FLOW_METHODS


def make_flow_estimator(method: str = "dis-medium"):
    """Return a callable (prev_gray uint8 (H, W), next_gray uint8 (H, W)) -> flow float32 (H, W, 2)."""
    if method.startswith("dis-"):
        presets = {
            "dis-medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
            "dis-fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "dis-ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        }
        if method not in presets:
            raise ValueError(f"unknown flow method {method!r}; choose from {METHODS}")
        dis = cv2.DISOpticalFlow_create(presets[method])
        return lambda a, b: dis.calc(a, b, None)
    if method == "farneback":
        return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise ValueError(f"unknown flow method {method!r}; choose from {METHODS}")


def endpoint_error(flow: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean end-point error in pixels between two (H, W, 2) flows over valid pixels."""
    err = np.linalg.norm(np.asarray(flow, np.float64) - np.asarray(reference, np.float64), axis=2)
    return float(err[valid].mean() if valid is not None else err.mean())
