"""scikit-learn's bundled handwritten digits: 1,797 real 8×8 grayscale images, 10 classes."""

from __future__ import annotations

import hashlib

import numpy as np

from crdist.data.sources.base import Source, SourceSample


def load_digits() -> Source:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixel values are integers 0..16; spread them over 0..255 so the images store as PNG.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    samples = [SourceSample(f"{i:06d}", int(label), "train", f"sklearn digits row {i}", row=i)
               for i, label in enumerate(labels)]
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    return Source("seq-digits", "image", samples, [str(c) for c in range(10)], f"sklearn-digits:{digest}",
                  "scikit-learn handwritten digits (UCI ML hand-written digits, 8×8)", channels=1, arrays=images)
