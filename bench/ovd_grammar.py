"""Cost of the OVD grammar: OVD prediction with and without it, side by side in one process.

    python bench/ovd_grammar.py                   # the bundled model on CPU, 32 synthetic scenes
    python bench/ovd_grammar.py --device cuda --scenes 256 --batch-size 64

Both decode the same scenes with the bundled model's settings otherwise; the grammar is timed off and on in
alternation, ``--repeats`` times each, and the medians are compared. Also times building the grammar for the 80
COCO names (done once per set of names and cached) with the test tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from padt.data.synthetic import BUNDLED_SCENES, SHAPES, make_scene
    from padt.generation import OVDAnswerGrammar
    from padt.inference import PaDT, default_model
    from padt.processing import PaDTProcessor
    from padt.tiny import COCO_CLASSES, tiny_processor

    pipe = PaDT.from_pretrained(default_model(), device=args.device)
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, **dataclasses.asdict(BUNDLED_SCENES)) for _ in range(args.scenes)]
    texts = [", ".join(SHAPES) for _ in scenes]

    def run(grammar: bool) -> tuple[float, int]:
        start, tokens = time.perf_counter(), 0
        for i in range(0, len(scenes), args.batch_size):
            batch = scenes[i : i + args.batch_size]
            out = pipe(
                [s.image for s in batch],
                texts[: len(batch)],
                task="ovd",
                max_new_tokens=192,
                ovd_grammar=grammar,
            )
            tokens += sum(len(pipe.processor.encode(p.text)) for p in out)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, tokens

    run(True)  # warm-up (and the grammar's tries for this list)
    times: dict[bool, list[float]] = {False: [], True: []}
    tokens: dict[bool, int] = {}
    for _ in range(args.repeats):
        for grammar in (False, True):
            seconds, tokens[grammar] = run(grammar)
            times[grammar].append(seconds)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.scenes} OVD scenes, batch {args.batch_size}, {args.device}, median of {args.repeats}")
    print("| grammar | seconds | answer tokens | ms per token |\n|---|---:|---:|---:|")
    for name, grammar, seconds in (("off", False, off), ("on", True, on)):
        print(f"| {name} | {seconds:.2f} | {tokens[grammar]} | {1000 * seconds / tokens[grammar]:.2f} |")
    print(f"on / off time: {on / off:.3f}")

    encode = PaDTProcessor(tiny_processor(), 2048).encode
    start = time.perf_counter()
    OVDAnswerGrammar(COCO_CLASSES, encode)
    print(f"grammar for the 80 COCO names: {time.perf_counter() - start:.2f} s to build")


if __name__ == "__main__":
    main()
