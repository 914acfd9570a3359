"""Training StyleGAN2 generators (from an image folder or by distilling a teacher generator)."""

from .trainer import TrainConfig, export_generator, save_image_grid, train

__all__ = ["TrainConfig", "export_generator", "save_image_grid", "train"]
