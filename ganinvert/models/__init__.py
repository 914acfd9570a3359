"""Generators, checkpoint readers, projection heads and encoders."""

from .loading import GeneratorSource, load_generator, save_generator
from .nvidia_pkl import read_nvidia_pickle
from .stylegan2 import FeatureEntry, StyleGAN2Generator, default_channels

__all__ = ["FeatureEntry", "GeneratorSource", "StyleGAN2Generator", "default_channels", "load_generator",
           "read_nvidia_pickle", "save_generator"]
