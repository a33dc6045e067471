"""Training augmentation: deterministic given its seed, per sample and epoch, wherever it runs."""

import torch

from crdist.data.augment import AugmentingDecoder, crop_flip, paper
from crdist.data.manifest import Manifest
from crdist.data.samples import ImageDecoder
from crdist.data.stream import RankStream, StreamSpec


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_flip_keeps_the_size_and_moves_pixels_by_at_most_the_padding():
    image = torch.rand(3, 32, 32)
    shifted = {tuple(crop_flip(image, _generator(s)).shape) for s in range(20)}
    assert shifted == {(3, 32, 32)}
    outputs = [crop_flip(image, _generator(s)) for s in range(20)]
    assert any(not torch.equal(o, image) for o in outputs)
    for out in outputs:  # every output pixel is an input pixel (crop, flip) or the zero padding
        values = set(image.flatten().tolist()) | {0.0}
        assert set(out.flatten().tolist()) <= values


def test_paper_policy_jitters_colours_and_is_a_function_of_its_seed():
    image = torch.rand(3, 32, 32)
    assert torch.equal(paper(image, _generator(7)), paper(image, _generator(7)))
    outputs = [paper(image, _generator(s)) for s in range(30)]
    assert all(o.shape == image.shape and 0 <= o.min() and o.max() <= 1 for o in outputs)
    # ColorJitter with p 0.8 changes values that a crop and flip alone cannot produce.
    values = set(image.flatten().tolist()) | {0.0}
    assert sum(not set(o.flatten().tolist()) <= values for o in outputs) >= 15
    # Grayscale with p 0.2: some outputs have three equal channels.
    assert any(torch.equal(o[0], o[1]) and torch.equal(o[1], o[2]) for o in outputs)


def test_a_sample_gets_the_same_augmentation_per_epoch_and_another_next_epoch(digits_shards):
    manifest = Manifest.load(digits_shards)
    decoder = ImageDecoder(1, manifest.image.mean, manifest.image.std)
    sample = next(iter(_raw(manifest)))
    first = AugmentingDecoder(decoder, "crop_flip", seed=0, task=1, epoch=0)
    again = AugmentingDecoder(decoder, "crop_flip", seed=0, task=1, epoch=0)
    later = [AugmentingDecoder(decoder, "crop_flip", seed=0, task=1, epoch=e)(sample)[0] for e in range(1, 6)]
    assert torch.equal(first(sample)[0], again(sample)[0])
    assert any(not torch.equal(first(sample)[0], x) for x in later)
    assert first(sample)[1] == decoder(sample)[1]


def test_an_augmented_stream_is_the_same_in_any_loader_process_and_unaugmented_for_none(digits_shards):
    manifest = Manifest.load(digits_shards)
    decoder = ImageDecoder(1, manifest.image.mean, manifest.image.std)

    def epoch(loader_workers, augment):
        spec = StreamSpec(1, "train", 0, 1, 16, loader_workers, 64, 0, order="global", augment=augment)
        return list(RankStream(manifest, spec, decoder).batches(0))

    in_process, in_worker = epoch(0, "paper"), epoch(1, "paper")
    plain = epoch(0, "none")
    assert len(in_process) == len(in_worker) == len(plain)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(in_process, in_worker))
    assert all(torch.equal(a[1], c[1]) for a, c in zip(in_process, plain))  # same samples, same order
    assert not all(torch.equal(a[0], c[0]) for a, c in zip(in_process, plain))


def _raw(manifest):
    import webdataset as wds

    urls = [manifest.url(s) for s in manifest.split(1, "train").shards]
    return wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
