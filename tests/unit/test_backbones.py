"""Every registered backbone builds and trains a step; torchvision checkpoints load through each
backbone's key mapping, and a file that does not fit is an error that says where."""

import pytest
import torch
import torchvision

from crdist.config import ConfigError
from crdist.models.backbones import BACKBONES
from crdist.models.classifier import build_classifier
from crdist.models.config import ModelConfig
from crdist.models.pretrained import load_pretrained
from crdist.models.weights import WeightsError

IMAGE_BACKBONES = [name for name in BACKBONES.names() if BACKBONES.get(name).modality == "image"]
ON_META = {"vit-l16", "vit-h14"}  # ≥ 300 M parameters: shapes and counts only, to keep the suite fast


def torchvision_reference(name: str) -> torch.nn.Module:
    """torchvision's own ImageNet model of the same architecture (for parameter counts)."""
    tv_name = {"vit-b16": "vit_b_16", "vit-l16": "vit_l_16", "vit-h14": "vit_h_14"}.get(name, name.removesuffix("-cifar"))
    return getattr(torchvision.models, tv_name)(weights=None)


GRAYSCALE = {"resnet18", "resnet18-cifar", "densenet121", "vit-tiny", "small-cnn"}  # one per stem


@pytest.mark.parametrize("name,channels", [(n, 3) for n in IMAGE_BACKBONES if n not in ON_META]
                         + [(n, 1) for n in sorted(GRAYSCALE)])
def test_backbone_trains_a_step(name, channels):
    # ImageNet's stems downsample 32×: they need 32 px; the rest is cheaper at 16
    size = 32 if name.startswith(("densenet", "mobilenet")) or (name.startswith("resnet") and not name.endswith("-cifar")) else 16
    model = build_classifier(ModelConfig(backbone=name), channels, num_classes=5, seed=0, image_size=size)
    images = torch.randn(4, channels, size, size)
    loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 4, 1, 2]))
    loss.backward()
    assert model.head.in_features == model.feature_dim
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), name
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())


@pytest.mark.parametrize("name", sorted(ON_META | {"vit-b16", "resnet152", "densenet121"}))
def test_large_backbones_match_torchvision(name):
    """At 224 px and 3 channels, each equals torchvision's model without its ImageNet classifier."""
    with torch.device("meta"):
        model = build_classifier(ModelConfig(backbone=name), 3, num_classes=10, seed=0, image_size=224)
        reference = torchvision_reference(name)
        features = model.backbone(torch.empty(2, 3, 224, 224))
    classifier = {"fc", "classifier", "heads"}
    expected = sum(p.numel() for n, p in reference.named_parameters() if n.split(".")[0] not in classifier)
    assert sum(p.numel() for p in model.backbone.parameters()) == expected
    assert features.shape == (2, model.feature_dim)
    if name in ON_META:
        assert expected >= 300e6


def test_vit_needs_a_fitting_image_size():
    with pytest.raises(ConfigError, match="divisible by 16"):
        build_classifier(ModelConfig(backbone="vit-b16"), 3, 10, seed=0, image_size=28)
    with pytest.raises(ConfigError, match="one image size"):
        build_classifier(ModelConfig(backbone="vit-tiny"), 3, 10, seed=0, image_size=None)
    model = build_classifier(ModelConfig(backbone="vit-tiny", patch_size=7), 1, 10, seed=0, image_size=28)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def save_torchvision(model: torch.nn.Module, path, wrap: str | None = None):
    state = model.state_dict()
    torch.save({wrap: state} if wrap else state, path)
    return state


def test_torchvision_resnet_checkpoint_loads(tmp_path):
    torch.manual_seed(1)
    state = save_torchvision(torchvision.models.resnet18(weights=None), tmp_path / "r18.pth", wrap="state_dict")
    model = build_classifier(ModelConfig(backbone="resnet18"), 3, 10, seed=0)
    head_before = model.head.weight.clone()
    assert load_pretrained(model.backbone, "resnet18", tmp_path / "r18.pth") == []
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert torch.equal(model.head.weight, head_before)  # crdist's head stays its own

    gray = build_classifier(ModelConfig(backbone="resnet18"), 1, 10, seed=0)
    notes = load_pretrained(gray.backbone, "resnet18", tmp_path / "r18.pth")
    assert notes == ["conv1.weight: RGB kernel summed to one channel"]
    assert torch.allclose(gray.backbone.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_densenet_checkpoint_with_torchvision_s_old_key_names_loads(tmp_path):
    """torchvision's published DenseNet file names layers 'norm.1' where the module has 'norm1'."""
    state = torchvision.models.densenet121(weights=None).state_dict()
    # as published: old names, and no BatchNorm step counters (saved before PyTorch 0.4)
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()
           if not k.endswith("num_batches_tracked")}
    assert old.keys() != state.keys()
    torch.save(old, tmp_path / "densenet121.pth")
    model = build_classifier(ModelConfig(backbone="densenet121"), 3, 62, seed=0)
    load_pretrained(model.backbone, "densenet121", tmp_path / "densenet121.pth")
    assert torch.equal(model.backbone.features.denseblock1.denselayer1.norm1.weight,
                       state["features.denseblock1.denselayer1.norm1.weight"])


def test_vit_checkpoint_position_embeddings_are_interpolated(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(2)
    source = VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)
    state = save_torchvision(source, tmp_path / "vit.pth")
    model = build_classifier(ModelConfig(backbone="vit-tiny", patch_size=16), 3, 10, seed=0, image_size=32)
    notes = load_pretrained(model.backbone, "vit-tiny", tmp_path / "vit.pth")
    assert notes == ["position embeddings interpolated from 197 to 5 tokens"]
    assert torch.equal(model.backbone.encoder.pos_embedding[:, :1], state["encoder.pos_embedding"][:, :1])
    assert torch.equal(model.backbone.conv_proj.weight, state["conv_proj.weight"])


def test_a_checkpoint_that_does_not_fit_says_where(tmp_path):
    save_torchvision(torchvision.models.resnet18(weights=None), tmp_path / "r18.pth")
    cifar = build_classifier(ModelConfig(backbone="resnet18-cifar"), 3, 10, seed=0)
    with pytest.raises(WeightsError, match=r"conv1.weight: expected \(64, 3, 3, 3\), the file has \(64, 3, 7, 7\)"):
        load_pretrained(cifar.backbone, "resnet18-cifar", tmp_path / "r18.pth")

    save_torchvision(torchvision.models.resnet50(weights=None), tmp_path / "r50.pth")
    r18 = build_classifier(ModelConfig(backbone="resnet18"), 3, 10, seed=0)
    before = {k: v.clone() for k, v in r18.state_dict().items()}
    with pytest.raises(WeightsError, match="another architecture"):
        load_pretrained(r18.backbone, "resnet18", tmp_path / "r50.pth")
    assert all(torch.equal(before[k], v) for k, v in r18.state_dict().items())  # nothing half-loaded

    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="not a torch checkpoint of tensors"):
        load_pretrained(r18.backbone, "resnet18", tmp_path / "notes.pth")
    with pytest.raises(WeightsError, match="not found"):
        load_pretrained(r18.backbone, "resnet18", tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="no torchvision checkpoints"):
        load_pretrained(build_classifier(ModelConfig(), 1, 10, seed=0).backbone, "small-cnn", tmp_path / "r18.pth")


@pytest.mark.parametrize("name", ["vit-tiny", "resnet18-cifar", "densenet121"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    from crdist.models import activation_checkpointing

    size = 32 if name == "densenet121" else 16
    images, labels = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    grads = []
    for recompute in (False, True):
        model = build_classifier(ModelConfig(backbone=name), 3, num_classes=4, seed=0, image_size=size)
        if recompute:
            assert activation_checkpointing.enable(model.backbone, name) > 0
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(*grads))


def test_activation_checkpointing_needs_a_backbone_with_blocks():
    from tests.helpers import study

    with pytest.raises(ConfigError, match="small-cnn has no blocks to checkpoint"):
        study(train={"activation_checkpointing": True})
