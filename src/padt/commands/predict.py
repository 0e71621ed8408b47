"""``padt predict``: ground a prompt in one or more images; text, boxes, masks and scores."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from padt.commands import add_decoding_arguments, positive_int, writable_file, writable_image_file
from padt.errors import PaDTError
from padt.tasks import TASK_NAMES, get_task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from padt.inference import DTYPES

    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint folder (model + processor files; default: the bundled model)",
    )
    parser.add_argument(
        "--image", action="append", required=True, help="input image; repeat for several images in one prompt"
    )
    parser.add_argument("--prompt", default="", help="prompt, or with --task the sentence / class list")
    parser.add_argument(
        "--task",
        choices=TASK_NAMES,
        help="build the reference prompt: rec/res sentence, ovd comma-separated classes, ric (no text)",
    )
    parser.add_argument(
        "--json", type=Path, help="write {text, objects: [{label, vrt_ids, box_xyxy, score, mask_rle}]} here"
    )
    parser.add_argument(
        "--coco-json",
        type=Path,
        help="write COCO results [{image_id, category (or category_id with --coco-gt), bbox: [x, y, w, h], "
        "score, segmentation}] here",
    )
    parser.add_argument(
        "--coco-gt",
        type=Path,
        help="COCO annotation file: image ids by file name and category ids by class name for --coco-json",
    )
    parser.add_argument(
        "--overlay", type=Path, help="write the image with boxes, labels, scores and masks here"
    )
    parser.add_argument("--show-vrt", action="store_true", help="also outline the VRT cells on the overlay")
    parser.add_argument("--max-new-tokens", type=positive_int, default=512)
    parser.add_argument(
        "--max-side", type=positive_int, default=None, help="cap the longer image side (px) first"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    add_decoding_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from padt.inference import PaDT, default_model

    task = get_task(args.task) if args.task else None
    if not args.prompt.strip() and (task is None or task.user_text):
        raise PaDTError("the prompt is empty; pass --prompt TEXT (or --task ric for a caption)")
    # Inputs and output paths are checked before the model loads, so a typo costs nothing.
    from padt.processing.images import open_image

    for image in args.image:
        if not Path(image).is_file():
            raise PaDTError(f"image file not found: {image}")
    images = [open_image(image) for image in args.image]
    writable_file(args.json, "--json")
    writable_image_file(args.overlay, "--overlay")
    writable_file(args.coco_json, "--coco-json")
    coco = None
    if args.coco_gt:
        if not args.coco_json:
            raise PaDTError("--coco-gt maps ids for --coco-json; pass --coco-json FILE too")
        from padt.adapters import coco_image_ids, read_coco_annotations

        coco = read_coco_annotations(args.coco_gt)
        coco_image_ids(args.image, coco)  # every image must be listed
    pipe = PaDT.from_pretrained(
        args.model or default_model(), device=args.device, dtype=args.dtype, max_side=args.max_side
    )
    [prediction] = pipe(
        [images],
        [args.prompt],
        task=args.task,
        max_new_tokens=args.max_new_tokens,
        vrt_repeat_penalty=args.vrt_repeat_penalty,  # None: the checkpoint's setting
        vrt_reuse_penalty=args.vrt_reuse_penalty,
        mask_box_weight=args.mask_box_weight,
        ovd_end_penalty=args.ovd_end_penalty,
        ovd_duplicate_iou=args.ovd_duplicate_iou,
        ovd_grammar=args.ovd_grammar,
    )
    print(prediction.text)
    for obj, image in zip(prediction.objects, prediction.object_images):
        where = f" [image {image}]" if len(args.image) > 1 else ""
        box = ", ".join(f"{v:.1f}" for v in obj.box_xyxy)
        duplicate = "" if obj.duplicate_of is None else f" (duplicate of object {obj.duplicate_of + 1})"
        print(
            f"  {obj.label or '(no label)'}{where}: box [{box}] score {obj.score:.3f} VRTs {obj.vrt_ids}{duplicate}"
        )
    for warning in prediction.warnings:
        print(f"padt: warning: {warning}", file=sys.stderr)
    if task is not None and task.refers_to_objects and not prediction.objects:
        print("padt: warning: the model referred to no image patch (no VRT in its answer)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(prediction.to_json(), indent=2))
    if args.coco_json:
        from padt.adapters import write_coco_results

        write_coco_results(args.coco_json, prediction, args.image, coco)
    if args.overlay:
        from padt.visualize import draw_prediction

        draw_prediction(
            images[0], prediction, image_index=0, show_vrt=args.show_vrt, processor=pipe.processor
        ).save(args.overlay)
        print(f"overlay written to {args.overlay}")
    return 0
