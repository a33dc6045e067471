"""Backbones: a name → a builder ``(in_channels, model_cfg) -> (module, feature_dim)``; one module each.

A backbone maps a batch of inputs (images, or a text backbone's tokenised fields) to a batch of
feature vectors (N × feature_dim). ``modality`` says which inputs it takes.
"""

from crdist.registry import Registry

BACKBONES: Registry = Registry("backbone")


def backbone(name: str, modality: str = "image"):
    def add(builder):
        builder.modality = modality
        return BACKBONES.register(name)(builder)

    return add


from crdist.models.backbones import densenet, hf_encoder, resnet_cifar, small_cnn  # noqa: E402,F401
