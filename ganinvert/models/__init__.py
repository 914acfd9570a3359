"""Generators, checkpoint readers, projection heads and encoders."""

from .loading import FORMATS, GENERATOR_HELP, CheckpointFormat, GeneratorSource, describe_formats, load_generator, \
    save_generator
from .nvidia_pkl import read_nvidia_pickle
from .stylegan2 import FeatureEntry, StyleGAN2Generator, default_channels

__all__ = ["FORMATS", "GENERATOR_HELP", "CheckpointFormat", "FeatureEntry", "GeneratorSource", "StyleGAN2Generator",
           "default_channels", "describe_formats", "load_generator", "read_nvidia_pickle", "save_generator"]
