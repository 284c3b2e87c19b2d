"""The training and validation data of the flow-site window models (no torch needed).

:class:`TrainSettings` says how :mod:`operators.models.train_flowsites` trains (it is
recorded in full); :func:`training_data` simulates the training and validation sites
(:mod:`generators.flowsites`) and cuts them into windows of 50 readings, labelled by
their last reading, with the per-channel scaling of the training readings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from generators.flowsites import FlowSiteConfig, SiteSeries, site_arrays
from operators.flowsites_eval import windows_of
from operators.models.flowsites_onnx import WINDOW

__all__ = ["TrainSettings", "TrainingData", "training_data"]

_TICKS_PER_DAY = 288
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TrainSettings:
    """How the models are trained (recorded in full).

    Attributes:
        data_seed: Seed of the training sites.
        sites: Training sites.
        days: Days of each training site.
        warmup_days: Days without faults at the start of each site.
        val_seed: Seed of the validation sites.
        val_sites: Validation sites.
        val_days: Days of each validation site.
        stride: Every ``stride``-th training window is used.
        classifier_hidden: Units of the classifier's LSTM.
        classifier_epochs: Passes over the classifier's windows.
        ae_hidden: Units of each of the autoencoder's LSTMs.
        ae_epochs: Passes over the autoencoder's windows.
        batch_size: Windows per optimiser step.
        learning_rate: Adam's initial learning rate.
        clip: Largest gradient norm.
        torch_seed: Seed of the initial weights and of the shuffles.
        threads: Torch threads (one: the same sums in the same order on every run).

    """

    data_seed: int = 101
    sites: int = 160
    days: int = 5
    warmup_days: float = 0.5
    val_seed: int = 102
    val_sites: int = 30
    val_days: int = 5
    stride: int = 4
    classifier_hidden: int = 64
    classifier_epochs: int = 10
    ae_hidden: int = 64
    ae_epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 2e-3
    clip: float = 1.0
    torch_seed: int = 1
    threads: int = 1

    def config(self, seed: int, sites: int, faults: bool = True) -> FlowSiteConfig:
        """The simulator settings of a training or validation set."""
        cfg = FlowSiteConfig(sites=sites, seed=seed, warmup_days=self.warmup_days)
        return cfg if faults else cfg.without_faults()


@dataclass(frozen=True)
class TrainingData:
    """Raw windows ``(n, 50, 5)`` and the last reading's label code of each.

    Attributes:
        train: Every ``stride``-th window of the training sites.
        train_labels: Label code of each training window's last reading.
        clean: Every ``stride``-th window of the training sites without faults.
        val: Every window of the validation sites.
        val_labels: Label code of each validation window's last reading.
        center: Per-channel mean of the clean training readings.
        scale: Per-channel standard deviation of the clean training readings.

    """

    train: F32
    train_labels: npt.NDArray[np.int8]
    clean: F32
    val: F32
    val_labels: npt.NDArray[np.int8]
    center: tuple[float, ...]
    scale: tuple[float, ...]


def _windows(series: list[SiteSeries], stride: int) -> tuple[F32, npt.NDArray[np.int8]]:
    wins = np.concatenate([windows_of(s.values)[::stride] for s in series])
    labels = np.concatenate([s.labels[WINDOW - 1 :][::stride] for s in series])
    return wins, labels


def training_data(s: TrainSettings) -> TrainingData:
    """The windows of the training and validation sites, and the scaling.

    Example:
        >>> d = training_data(TrainSettings(sites=2, days=1, val_sites=1, val_days=1))
        >>> d.train.shape, d.val.shape, len(d.center)
        ((120, 50, 5), (239, 50, 5), 5)

    """
    ticks = s.days * _TICKS_PER_DAY
    train = site_arrays(s.config(s.data_seed, s.sites), ticks)
    clean = site_arrays(s.config(s.data_seed, s.sites, faults=False), ticks)
    val = site_arrays(s.config(s.val_seed, s.val_sites), s.val_days * _TICKS_PER_DAY)
    readings = np.concatenate([c.values for c in clean])
    x, y = _windows(train, s.stride)
    xv, yv = _windows(val, 1)
    return TrainingData(
        train=x,
        train_labels=y,
        clean=_windows(clean, s.stride)[0],
        val=xv,
        val_labels=yv,
        center=tuple(float(v) for v in readings.mean(axis=0)),
        scale=tuple(float(v) for v in readings.std(axis=0)),
    )
