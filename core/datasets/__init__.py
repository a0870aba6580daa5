"""Datasets: few-shot (Omniglot, mini-ImageNet, the episode sampler) and supervised.

Supervised sources (MNIST, Fashion-MNIST, prepared TFDS datasets) are read by
`core.datasets.supervised.load_supervised` into `core.datasets.arrays.Arrays`.

Test helpers that write tiny fake datasets live in `core.datasets.fake` and
are not imported here.
"""

from core.datasets.class_images import ClassImages
from core.datasets.episodes import Episode
from core.datasets.episodes import EpisodeSampler
from core.datasets.episodes import EpisodeSpec
from core.datasets.episodes import fixed_episodes
from core.datasets.miniimagenet import load_miniimagenet
from core.datasets.omniglot import load_omniglot

__all__ = [
    'ClassImages', 'Episode', 'EpisodeSampler', 'EpisodeSpec',
    'fixed_episodes', 'load_miniimagenet', 'load_omniglot',
]
