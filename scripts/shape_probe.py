"""Do a model's image features know an object's shape? A linear probe on the synthetic world.

    padt data synthetic --task ovd --n 400 --seed 1001 --min-size 112 --max-size 196 --max-objects 6 \
        --out runs/probe_data
    python scripts/shape_probe.py runs/probe_data [--model PATH]

``--model`` takes any PaDT checkpoint folder: a finished model, a checkpoint of a run, or the output of a
vision pretraining stage (``runs/bundled/vision``). For every object of the OVD records it averages the model's
post-merger image features (what the image tokens get) and its VRT prototypes over the object's foreground
patches, fits a linear classifier of the shape name on 70% of the objects and prints its accuracy on the other
30%, next to the majority-class rate, and that accuracy on the held-out objects in thirds by area (a tower whose
patches are too coarse for small objects names large ones better). A high number says the vision tower encodes
shape and the language model fails to use it; a number near chance says the vision tower does not encode it.
The objects' patches are those training uses: recomputed where the model's processor puts an image on another
grid than the records' lists.

``--several`` asks instead whether the features tell one object of a kind from several: for every kind in every
image it pools the image features over the patches of all the objects of that kind, by their mean, their sum and
their maximum, and probes each pooling (and the number of patches alone) for "more than one object". Attention
reads its inputs through weighted means: a pooling that tells them apart where the mean does not says the
information is in the features but out of a plain average's reach.

    python scripts/shape_probe.py runs/probe_data --several
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image


def encode_image(pipe, record, image_root: Path):
    """The model's vision outputs (``image_embeds``, ``prototypes``, ...) for a record's image, and its objects'
    foreground patches on the grid the model's processor gives it (recomputed where that is not the grid of the
    record's lists, as training does)."""
    from padt.training.batch import object_patches

    image = Image.open(image_root / record.images[0]).convert("RGB")
    batch = pipe.processor(["x"], [image])
    grid = pipe.processor.geometry.grid_thw_to_vrt_grid(batch.inputs["image_grid_thw"][0])
    patches = [
        object_patches(obj, grid, (image.height, image.width), geometry=pipe.processor.geometry)
        for obj in record.objects
    ]
    with torch.no_grad():
        vision = pipe.model.encode_images(
            batch.inputs["pixel_values"].to(pipe.model.dtype), batch.inputs["image_grid_thw"]
        )
    return vision, patches


def object_features(pipe, records, image_root: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Per object: its mean image features and prototypes, and its shape name."""
    from padt.evaluation.probe import object_features as mean_over

    feats: dict[str, list[torch.Tensor]] = {"image features": [], "prototypes": []}
    labels = []
    for record in records:
        vision, patches = encode_image(pipe, record, image_root)
        feats["image features"].append(mean_over(vision.image_embeds, patches))
        feats["prototypes"].append(mean_over(vision.prototypes, patches))
        labels.extend(obj.label for obj in record.objects)
    return {k: torch.cat(v) for k, v in feats.items()}, labels


def kind_features(pipe, records, image_root: Path) -> tuple[dict[str, torch.Tensor], list[bool]]:
    """Per kind of each image: the image features over the patches of its objects pooled by mean, sum and max,
    the number of those patches, and whether the image holds more than one object of the kind."""
    feats: dict[str, list[torch.Tensor]] = {"mean": [], "sum": [], "max": [], "patches": []}
    several = []
    for record in records:
        vision, own_patches = encode_image(pipe, record, image_root)
        kinds: dict[str, list] = {}
        for obj, own in zip(record.objects, own_patches, strict=True):
            kinds.setdefault(obj.label, []).append(own)
        for objects in kinds.values():
            patches = sorted({p for own in objects for p in own})
            rows = vision.image_embeds[torch.tensor(patches)].float()
            feats["mean"].append(rows.mean(0))
            feats["sum"].append(rows.sum(0))
            feats["max"].append(rows.max(0).values)
            feats["patches"].append(torch.tensor([float(len(patches))]))
            several.append(len(objects) > 1)
    return {k: torch.stack(v) for k, v in feats.items()}, several


def several_probe(pipe, records, image_root: Path) -> dict:
    """Held-out accuracy of "more than one object of the kind" from each pooling, and the majority rate."""
    from padt.evaluation.probe import linear_probe, majority_rate

    feats, several = kind_features(pipe, records, image_root)
    y = torch.tensor(several, dtype=torch.long)
    train = torch.arange(len(y)) < int(0.7 * len(y))
    result = {"kinds": len(y), "several": int(y.sum()), "majority": majority_rate(y, train)}
    for name, x in feats.items():
        result[name] = linear_probe(x, y, train, 2)
    return result


def accuracy_by_size(
    hits: torch.Tensor, areas: torch.Tensor, parts: int = 3
) -> list[tuple[float, float, float]]:
    """``(smallest area, largest area, accuracy)`` of the probe on each of ``parts`` equal groups of objects,
    smallest first (``hits``: whether it named each object right; ``areas``: their areas in pixels)."""
    order = torch.argsort(areas, stable=True)
    groups = torch.tensor_split(order, parts)
    return [
        (float(areas[g].min()), float(areas[g].max()), float(hits[g].float().mean()))
        for g in groups
        if len(g)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="folder written by padt data synthetic --task ovd")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--several", action="store_true", help="probe one object of a kind against several (docstring)"
    )
    args = parser.parse_args()

    from padt.data.records import read_records
    from padt.evaluation.probe import linear_probe_hits, majority_rate
    from padt.inference import PaDT, default_model

    torch.manual_seed(0)
    pipe = PaDT.from_pretrained(args.model or default_model(), device="cpu")
    records = [r for r in read_records(args.data / "records.jsonl") if r.objects]
    if args.several:
        result = several_probe(pipe, records, args.data)
        print(
            f"{result['kinds']} kinds in {len(records)} images, {result['several']} with several objects; "
            f"majority class on the held-out 30%: {result['majority']:.3f}"
        )
        for name in ("mean", "sum", "max"):
            print(f"linear probe on the image features' {name} over the kind's patches: {result[name]:.3f}")
        print(f"linear probe on the number of the kind's patches: {result['patches']:.3f}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return
    feats, labels = object_features(pipe, records, args.data)
    areas = torch.tensor([obj.area for record in records for obj in record.objects])
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    train = torch.arange(len(y)) < int(0.7 * len(y))
    result = {"objects": len(y), "shapes": len(classes), "majority": majority_rate(y, train)}
    print(
        f"{len(y)} objects, {len(classes)} shapes; majority class on the held-out 30%: {result['majority']:.3f}"
    )
    for name, x in feats.items():
        if float(x.std()) == 0:  # e.g. the prototypes of a model whose prototype transform is still at zero
            print(f"linear probe on {name}: n/a (all features equal)")
            continue
        hits = linear_probe_hits(x, y, train, len(classes))
        result[name] = hits.float().mean().item()
        print(f"linear probe on {name}: {result[name]:.3f}")
        by_size = accuracy_by_size(hits, areas[~train])
        result[f"{name} by size"] = by_size
        print(
            "  by object area, thirds of the held-out objects: "
            + ", ".join(f"{low:.0f}-{high:.0f} px {accuracy:.3f}" for low, high, accuracy in by_size)
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
