"""Do a model's image features know an object's shape? A linear probe on the synthetic world.

    padt data synthetic --task ovd --n 400 --seed 1001 --min-size 112 --max-size 196 --max-objects 6 \
        --out runs/probe_data
    python scripts/shape_probe.py runs/probe_data [--model PATH]

For every object of the OVD records it averages the model's post-merger image features (what the image tokens
get) and its VRT prototypes over the object's foreground patches, fits a linear classifier of the shape name on
70% of the objects and prints its accuracy on the other 30%, next to the majority-class rate. A high number says
the vision tower encodes shape and the language model fails to use it; a number near chance says the vision
tower does not encode it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def object_features(pipe, records, image_root: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    feats: dict[str, list[torch.Tensor]] = {"image features": [], "prototypes": []}
    labels = []
    for record in records:
        image = Image.open(image_root / record.images[0]).convert("RGB")
        batch = pipe.processor(["x"], [image])
        with torch.no_grad():
            vision = pipe.model.encode_images(
                batch.inputs["pixel_values"].to(pipe.model.dtype), batch.inputs["image_grid_thw"]
            )
        for obj in record.objects:
            index = torch.tensor(obj.patches)
            feats["image features"].append(vision.image_embeds[index].float().mean(0))
            feats["prototypes"].append(vision.prototypes[index].float().mean(0))
            labels.append(obj.label)
    return {k: torch.stack(v) for k, v in feats.items()}, labels


def probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, classes: int, steps: int = 500) -> float:
    """Held-out accuracy of an L2-regularised linear softmax classifier fitted with Adam."""
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (
            torch.nn.functional.cross_entropy(x[train] @ weight + bias, y[train]) + 1e-3 * weight.pow(2).sum()
        )
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return ((x[~train] @ weight + bias).argmax(1) == y[~train]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder written by padt data synthetic --task ovd")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    args = parser.parse_args()

    from padt.data.records import read_records
    from padt.inference import PaDT, default_model

    torch.manual_seed(0)
    pipe = PaDT.from_pretrained(args.model or default_model(), device="cpu")
    records = [r for r in read_records(args.data / "records.jsonl") if r.objects]
    feats, labels = object_features(pipe, records, args.data)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    train = torch.arange(len(y)) < int(0.7 * len(y))
    majority = np.bincount(y[~train].numpy()).max() / int((~train).sum())
    print(f"{len(y)} objects, {len(classes)} shapes; majority class on the held-out 30%: {majority:.3f}")
    for name, x in feats.items():
        print(f"linear probe on {name}: {probe(x, y, train, len(classes)):.3f}")


if __name__ == "__main__":
    main()
