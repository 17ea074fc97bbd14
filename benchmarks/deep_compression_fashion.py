"""Deep Compression's setting on the full Fashion-MNIST: teachers trained on all 55,000
training images, searched as in ``deep_compression`` (60 trials, 5 seeds: hours on 2 cores).

    .venv/bin/python -m benchmarks deep_compression_fashion [--quick | --smoke]
    .venv/bin/python benchmarks/deep_compression.py --dataset fashion_mnist [--trials N] ...

``--quick``: LeNet-300-100 only, 10 trials, 1 seed (about 1.5 minutes, and about a minute more
the first time, to train its teacher). The smoke form is ``deep_compression``'s (the 8x8 digits).
"""

from __future__ import annotations

from benchmarks import deep_compression
from benchmarks.common import Headline, sized


def main(size: str = "full") -> Headline:
    return deep_compression.main(size, dataset="fashion_mnist",
                                 trials=sized(size, full=60, quick=10, smoke=3))
