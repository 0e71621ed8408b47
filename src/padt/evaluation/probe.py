"""Linear probes: does a model's image representation make an object's kind linearly readable?

The features of an object are its image features (what the prompt's image tokens get) averaged over its
foreground patches. A linear softmax classifier is fitted on one part of the objects and scored on the others;
a score near the majority-class rate says the vision tower does not encode the property, a high one that it
does (and that a language model reading those features can use it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def object_features(features: torch.Tensor, patches: Sequence[Sequence[int]]) -> torch.Tensor:
    """``O x D``: the rows of ``features`` (one image's ``N x D`` patch features) averaged over each object's
    patch indices."""
    return torch.stack(
        [features[torch.as_tensor(list(p), dtype=torch.long)].float().mean(0) for p in patches]
    )


def linear_probe(
    x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, classes: int | None = None, **options: int | float
) -> float:
    """Held-out accuracy of an L2-regularised linear softmax classifier of ``y`` from ``x``: the mean of
    :func:`linear_probe_hits` (``options``: its ``steps`` and ``l2``)."""
    return linear_probe_hits(x, y, train, classes, **options).float().mean().item()


def linear_probe_hits(
    x: torch.Tensor,
    y: torch.Tensor,
    train: torch.Tensor,
    classes: int | None = None,
    *,
    steps: int = 500,
    l2: float = 1e-3,
) -> torch.Tensor:
    """Whether an L2-regularised linear softmax classifier of ``y`` from ``x``, fitted on the ``train`` rows,
    is right on each of the others (bool, in their order): for accuracies by group of objects.

    Args:
        x: ``O x D`` features; standardised with the statistics of the training rows.
        y: ``(O,)`` class indices.
        train: ``(O,)`` bool, the rows to fit on; the score is the accuracy on the others.
        classes: number of classes (default ``y.max() + 1``).
        steps, l2: Adam steps (lr 1e-2, full batch) and the weight penalty.
    """
    x, y, train = x.float(), y.long(), train.bool()
    if bool(train.all()) or not bool(train.any()):
        raise ValueError("the probe needs objects both to fit on and to score")
    classes = int(y.max()) + 1 if classes is None else classes
    with torch.enable_grad():
        x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
        weight = torch.zeros(x.shape[1], classes, requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = (
                torch.nn.functional.cross_entropy(x[train] @ weight + bias, y[train])
                + l2 * weight.pow(2).sum()
            )
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (x[~train] @ weight + bias).argmax(1) == y[~train]


def majority_rate(y: torch.Tensor, train: torch.Tensor) -> float:
    """Accuracy on the held-out rows of always answering the most frequent held-out class (the chance level
    quoted next to a probe)."""
    held = y[~train.bool()].long().numpy()
    return float(np.bincount(held).max() / len(held))
