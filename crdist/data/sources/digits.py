"""scikit-learn's bundled handwritten digits: 1,797 real 8×8 grayscale images, 10 classes."""

from __future__ import annotations

import hashlib

import numpy as np

from crdist.data.sources.images import ImageSet


def load_digits() -> ImageSet:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixel values are integers 0..16; spread them over 0..255 so the images store as PNG.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    return ImageSet(
        images=images,
        labels=labels,
        class_names=[str(c) for c in range(10)],
        fingerprint=f"sklearn-digits:{digest}",
        description="scikit-learn handwritten digits (UCI ML hand-written digits, 8×8)",
    )
