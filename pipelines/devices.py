"""Torch device selection from :class:`~pipelines.base.RuntimeOptions`."""

from __future__ import annotations

import torch

from pipelines.base import RuntimeOptions


def select_device(runtime: RuntimeOptions) -> torch.device:
    """Return the device models run on and cap CPU intra-op threads.

    ``auto`` is ``cuda`` when ``torch.cuda.is_available()`` else ``cpu``; ``cuda`` on a machine
    without a usable GPU is an error (a misconfiguration, not a silent fallback).
    ``torch.set_num_threads(runtime.torch_threads)`` is applied in every case so that CPU work
    (pre/post-processing included) never starves the DICOM receiver.
    """
    if runtime.torch_threads < 1:
        raise ValueError(f"torch_threads must be >= 1, got {runtime.torch_threads}")
    torch.set_num_threads(runtime.torch_threads)
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if runtime.device == "cpu":
        return torch.device("cpu")
    if runtime.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {runtime.device!r} was asked for but torch.cuda.is_available() is False")
        return torch.device(runtime.device)
    raise ValueError(f"unknown device {runtime.device!r}: use 'auto', 'cpu' or 'cuda'")
