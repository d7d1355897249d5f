"""Batching a task for Lightning: padding, a deterministic resumable sampler, the LightningDataModule."""

from basel_app.data.datamodule import EncodedDataset, PadCollator, TaskDataModule, pad_token_id_of
from basel_app.data.sampler import EpochSeededSampler, ResumableBatchSampler

__all__ = [
    "EncodedDataset",
    "EpochSeededSampler",
    "PadCollator",
    "ResumableBatchSampler",
    "TaskDataModule",
    "pad_token_id_of",
]
