"""Training of the learned inverters; importing this package registers every trainer."""

from .loop import TRAINERS, InverterTrainConfig, InverterTrainer, TrainingData, register_trainer, train_inverter
from . import basecode, sam_predictor  # registers fz-encoder and sam-predictor
from . import hyperinverter  # registers hyperinverter-e1 and hyperinverter

__all__ = ["TRAINERS", "InverterTrainConfig", "InverterTrainer", "TrainingData", "register_trainer", "train_inverter"]
