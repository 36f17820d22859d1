"""baselines/torchvision_weights.py: torchvision's alexnet() weights in and out of the checkpoint format."""
import pytest
import torch
from torchvision.models import alexnet

from cpfs_bench.baselines.random_init import write_random_checkpoint
from cpfs_bench.baselines.torchvision_weights import export_torchvision, import_torchvision
from cpfs_bench.bench.checkpoint import CheckpointError, load_checkpoint
from cpfs_bench.evaluate.backbone import load_trunk


@pytest.fixture(scope="module")
def torchvision_model(tmp_path_factory):
    torch.manual_seed(0)
    model = alexnet(weights=None, num_classes=1000).eval()
    path = tmp_path_factory.mktemp("tv") / "alexnet.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_imported_trunk_computes_torchvision_activations(torchvision_model, tmp_path):
    model, path = torchvision_model
    ckpt = import_torchvision(path, tmp_path / "tv.pt")
    trunk, info = load_trunk(ckpt)
    assert info["arch"] == "alexnet" and info["loss"] == "torchvision-import"
    assert info["mean"] == [0.485, 0.456, 0.406] and info["std"] == [0.229, 0.224, 0.225]
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ours = trunk.activations(x.contiguous(memory_format=torch.channels_last), ("conv1", "conv5", "pool5", "fc7"))
    with torch.no_grad():
        f = model.features
        torch.testing.assert_close(ours["conv1"], f[:2](x))
        torch.testing.assert_close(ours["conv5"], f[:12](x))
        pool5 = f(x)
        torch.testing.assert_close(ours["pool5"], pool5)
        fc7 = model.classifier[:6](torch.flatten(model.avgpool(pool5), 1))
        torch.testing.assert_close(ours["fc7"], fc7)
        head = load_checkpoint(ckpt)["head"]
        torch.testing.assert_close(ours["fc7"] @ head["weight"].T + head["bias"], model(x))


def test_export_round_trips_to_torchvision(torchvision_model, tmp_path):
    model, path = torchvision_model
    out, with_classifier = export_torchvision(import_torchvision(path, tmp_path / "tv.pt"), tmp_path / "back.pth")
    back = torch.load(out, weights_only=True)
    original = model.state_dict()
    assert with_classifier and set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    alexnet(weights=None).load_state_dict(back)  # strict


def test_caffenet_and_foreign_files_are_refused(torchvision_model, tmp_path):
    caffenet = write_random_checkpoint(tmp_path / "c.pt", "caffenet")
    with pytest.raises(ValueError, match=r"conv1 weights are \(96, 3, 11, 11\) here, \(64, 3, 11, 11\) in torchvision"):
        export_torchvision(caffenet, tmp_path / "x.pth")
    torch.save(load_checkpoint(caffenet)["trunk"], tmp_path / "caffenet_state.pth")
    with pytest.raises(CheckpointError, match=r"caffenet_state\.pth: not torchvision's alexnet\(\) state dict"):
        import_torchvision(tmp_path / "caffenet_state.pth", tmp_path / "y.pt")
    model, _ = torchvision_model
    state = model.state_dict()
    state["features.0.weight"] = state["features.0.weight"][:32]
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError, match=r"other shapes \['features.0.weight \(32, 3, 11, 11\)"):
        import_torchvision(tmp_path / "narrow.pth", tmp_path / "z.pt")
