"""Patch-feature ONNX models of the frame flow: the shipped EfficientNet-Lite0 model and a fallback.

``patch_lite0.onnx`` is made by :mod:`operators.models.export_lite0` (needs the ``train``
extra); :mod:`operators.models.randconv` builds a seeded random-convolution network with
``onnx.helper`` alone. Both take ``frame`` ``(batch, 1, H, W)`` and give ``features``
``(batch, D, ceil(H / 16), ceil(W / 16))``.
"""
