"""pretrain/flow.py: KITTI 16-bit PNG flow files."""
import cv2
import numpy as np
import pytest

from cpfs_bench.bench.flowio import read_flow_png, write_flow_png
from cpfs_bench.pretrain.flow import endpoint_error


def test_round_trip_exact_on_the_1_64_grid(tmp_path):
    rng = np.random.default_rng(0)
    flow = (rng.integers(-512 * 64, 512 * 64, size=(37, 53, 2)) / 64).astype(np.float32)
    valid = rng.random((37, 53)) > 0.2
    write_flow_png(tmp_path / "f.png", flow, valid)
    back, back_valid = read_flow_png(tmp_path / "f.png")
    assert back.dtype == np.float32 and back.shape == (37, 53, 2)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[valid], flow[valid])
    assert (back[~valid] == 0).all()


def test_round_trip_within_half_a_step_and_kitti_layout(tmp_path):
    rng = np.random.default_rng(1)
    flow = rng.normal(scale=20, size=(30, 40, 2)).astype(np.float32)
    flow[0, 0] = [np.nan, 1.0]
    flow[0, 1] = [1000.0, -1000.0]  # beyond the representable range: clipped
    write_flow_png(tmp_path / "f.png", flow)
    back, valid = read_flow_png(tmp_path / "f.png")
    assert not valid[0, 0] and valid.sum() == 30 * 40 - 1
    ok = valid.copy()
    ok[0, 1] = False
    assert np.abs(back[ok] - flow[ok]).max() <= 1 / 128 + 1e-6
    assert back[0, 1, 0] == pytest.approx((2**16 - 1 - 2**15) / 64) and back[0, 1, 1] == -512
    # KITTI convention read independently with OpenCV: BGR = (valid, v, u), value = f * 64 + 2^15
    raw = cv2.imread(str(tmp_path / "f.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (30, 40, 3)
    np.testing.assert_array_equal(raw[..., 0] > 0, valid)
    np.testing.assert_array_equal(raw[5, 7, 2], np.uint16(round(flow[5, 7, 0] * 64) + 2**15))
    np.testing.assert_array_equal(raw[5, 7, 1], np.uint16(round(flow[5, 7, 1] * 64) + 2**15))


@pytest.mark.parametrize("image, what", [
    (np.zeros((8, 8, 3), np.uint8), "16-bit"),
    (np.zeros((8, 8), np.uint16), "3-channel"),
    (np.zeros((8, 8, 4), np.uint16), "3-channel"),
])
def test_rejects_other_pngs_naming_the_file(tmp_path, image, what):
    path = tmp_path / "bad.png"
    cv2.imwrite(str(path), image)
    with pytest.raises(ValueError, match=f"bad.png.*{what}"):
        read_flow_png(path)


def test_rejects_non_png_and_truncated_files(tmp_path):
    jpg = tmp_path / "frame.png"
    cv2.imwrite(str(tmp_path / "x.jpg"), np.zeros((8, 8, 3), np.uint8))
    jpg.write_bytes((tmp_path / "x.jpg").read_bytes())
    with pytest.raises(ValueError, match="frame.png.*not a PNG"):
        read_flow_png(jpg)
    write_flow_png(tmp_path / "ok.png", np.zeros((20, 20, 2), np.float32))
    cut = tmp_path / "cut.png"
    cut.write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    with pytest.raises(ValueError, match="cut.png"):
        read_flow_png(cut)


def test_endpoint_error():
    a = np.zeros((2, 2, 2))
    b = np.zeros((2, 2, 2))
    b[0, 0] = [3, 4]
    assert endpoint_error(a, b) == pytest.approx(5 / 4)
