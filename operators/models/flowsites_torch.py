"""The flow-site window models in torch, and their seeded training loop (needs the train extra).

Two modules, their ``state_dict`` keys those :mod:`operators.models.flowsites_onnx`
exports:

* :func:`classifier_net`: ``lstm`` (``LSTM(5, H)``, batch first) and ``head``
  (``Linear(H, 1)``); the forward pass returns the logit that the window's last
  reading is faulty (the ONNX graph adds the sigmoid);
* :func:`autoencoder_net`: ``encoder`` (``LSTM(5, H)``), ``decoder``
  (``LSTM(H, H)`` over the encoder's last hidden state repeated at every step) and
  ``output`` (``Linear(H, 5)`` per step); the forward pass returns the reconstruction.

:func:`fit` trains either with Adam, gradient-norm clipping, a cosine learning-rate
decay to zero and a seeded shuffle, on one thread with deterministic algorithms, so
a run repeats on the same machine.

torch is imported when a function is called, so the package (and its doctests) load
without it.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.sitereading import CHANNELS

__all__ = ["autoencoder_net", "classifier_net", "fit", "load_state", "require", "state_of"]

F32 = npt.NDArray[np.float32]


def require(name: str) -> Any:
    """Import an optional dependency of the ``train`` extra, naming the extra if missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SystemExit(
            f"train_flowsites: needs {name!r} from the train extra: pip install -e '.[train]'"
        ) from exc


def classifier_net(hidden: int) -> Any:
    """The window classifier (``lstm``, ``head``); forward gives ``(batch,)`` logits."""
    torch = require("torch")
    nn = torch.nn

    def forward(self: Any, x: Any) -> Any:
        _, (h, _) = self.lstm(x)
        return self.head(h[-1]).squeeze(1)

    model = type("WindowClassifier", (nn.Module,), {"forward": forward})()
    model.lstm = nn.LSTM(len(CHANNELS), hidden, batch_first=True)
    model.head = nn.Linear(hidden, 1)
    return model


def autoencoder_net(hidden: int) -> Any:
    """The LSTM autoencoder (``encoder``, ``decoder``, ``output``); forward reconstructs."""
    torch = require("torch")
    nn = torch.nn

    def forward(self: Any, x: Any) -> Any:
        _, (h, _) = self.encoder(x)
        y, _ = self.decoder(h[-1].unsqueeze(1).expand(-1, x.shape[1], -1))
        return self.output(y)

    model = type("WindowAutoencoder", (nn.Module,), {"forward": forward})()
    model.encoder = nn.LSTM(len(CHANNELS), hidden, batch_first=True)
    model.decoder = nn.LSTM(hidden, hidden, batch_first=True)
    model.output = nn.Linear(hidden, len(CHANNELS))
    return model


def state_of(model: Any) -> dict[str, F32]:
    """A module's weights as float32 numpy arrays, by ``state_dict`` key."""
    return {
        k: np.asarray(v.detach().cpu().numpy(), np.float32) for k, v in model.state_dict().items()
    }


def load_state(model: Any, state: Mapping[str, F32]) -> Any:
    """Copy numpy weights into ``model``; returns it in eval mode."""
    torch = require("torch")
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model.eval()


def fit(
    model: Any,
    loss_of: Callable[[Any, Any, Any], Any],
    x: F32,
    y: F32 | None,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    clip: float,
    seed: int,
    log: Callable[[str], object] = print,
) -> list[float]:
    """Train ``model`` in place; returns each epoch's mean training loss.

    Args:
        model: A module from :func:`classifier_net` or :func:`autoencoder_net`
            (built after the caller seeded torch).
        loss_of: ``loss_of(model, batch_x, batch_y)``, a scalar tensor.
        x: Scaled windows ``(n, 50, 5)``.
        y: Targets per window, or ``None`` (the autoencoder's target is ``x``).
        epochs: Passes over the windows.
        batch_size: Windows per optimiser step.
        learning_rate: Adam's initial learning rate (cosine decay to 0 at the last step).
        clip: Largest gradient norm.
        seed: Seed of the shuffles.
        log: Where each epoch's line goes.

    """
    torch = require("torch")
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y) if y is not None else None
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps = epochs * -(-len(xt) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    order = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for epoch in range(epochs):
        model.train()
        started, total = time.monotonic(), 0.0
        for idx in torch.randperm(len(xt), generator=order).split(batch_size):
            batch = xt[idx]
            loss = loss_of(model, batch, yt[idx] if yt is not None else batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(xt))
        log(
            f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.5f} ({time.monotonic() - started:.1f}s)"
        )
    model.eval()
    return losses
