"""Caption metrics for referring image captioning (RIC): CIDEr-D, BLEU-4, METEOR and ROUGE-L.

The reference releases no RIC evaluation (docs/method.md §10.4); these are the COCO caption toolkit's
(pycocoevalcap) scorers behind its Stanford PTB tokenizer, the usual way the paper's Table 4 columns are
computed. pycocoevalcap's ``Cider`` scorer is CIDEr-D (clipped n-gram counts, length penalty σ = 6).
Tokenising and METEOR run Java; without Java this module raises :class:`PaDTError`, and if METEOR alone
fails the other metrics are still returned, with a warning.

Captions are scored as plain text: :func:`plain_caption` removes the grounding (``(<|Obj_0|>)`` placeholders
or ``(<|VRT_..|>...)`` runs) first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from padt.errors import PaDTError

_OBJECT_TOKEN = r"<\|(?:Obj|VRT)_\d+\|>"
# A parenthesised group holding only object tokens, commas and spaces, e.g. " (<|Obj_0|>, <|Obj_1|>)".
_GROUNDING_GROUP = re.compile(rf"\s*\(\s*(?:{_OBJECT_TOKEN}[\s,]*)+\)")
_OBJECT_TOKENS = re.compile(rf"(?:{_OBJECT_TOKEN})+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")

METRICS = ("bleu4", "meteor", "rouge_l", "cider")


def plain_caption(text: str) -> str:
    """The caption without its grounding: ``'A man (<|Obj_0|>) rides.'`` -> ``'A man rides.'``."""
    text = _GROUNDING_GROUP.sub("", text)
    text = _OBJECT_TOKENS.sub("", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return " ".join(text.split())


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise PaDTError(
            "caption metrics need Java for the PTB tokenizer; install a JRE (e.g. openjdk-17-jre)"
        )
    return java


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """Lower-case PTB tokenisation with punctuation removed, as pycocoevalcap's ``PTBTokenizer``.

    Same command and punctuation list, but the temporary file lives in the system temp folder (the toolkit
    writes next to its jar, which fails in a read-only install).
    """
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    keys = [k for k, caps in captions.items() for _ in caps]
    lines = [c.replace("\n", " ") for caps in captions.values() for c in caps]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(lines))
        tmp = f.name
    try:
        cmd = [
            _java(),
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
        ]
        proc = subprocess.run([*cmd, tmp], capture_output=True, check=False)
    finally:
        os.remove(tmp)
    if proc.returncode != 0:
        raise PaDTError(f"the PTB tokenizer failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    out_lines = proc.stdout.decode("utf-8").split("\n")
    tokenized: dict[Hashable, list[str]] = {k: [] for k in captions}
    for k, line in zip(keys, out_lines, strict=False):
        words = [w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS]
        tokenized[k].append(" ".join(words))
    return tokenized


def caption_metrics(
    references: Mapping[Hashable, Sequence[str]],
    hypotheses: Mapping[Hashable, str],
    *,
    meteor: bool = True,
) -> dict[str, float]:
    """``bleu4``, ``meteor``, ``rouge_l``, ``cider`` of one hypothesis per image against its references.

    Both mappings are keyed by image; every hypothesis needs references and every referenced image a
    hypothesis (a missing one is an error, not a zero, so that partial runs are not mistaken for scores).
    Captions are taken as given: apply :func:`plain_caption` to grounded text first.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    missing = [k for k in references if k not in hypotheses]
    extra = [k for k in hypotheses if k not in references]
    if missing or extra:
        raise PaDTError(
            f"captions do not pair up: {len(missing)} image(s) without a prediction (e.g. {missing[:3]}), "
            f"{len(extra)} prediction(s) without references (e.g. {extra[:3]}); predict every image once"
        )
    if not references:
        raise PaDTError("no captions to score")
    for k, refs in references.items():
        if not refs:
            raise PaDTError(f"image {k!r} has no reference caption")
    gts = ptb_tokenize(references)
    res = ptb_tokenize({k: [hypotheses[k]] for k in references})
    out: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out["bleu4"] = float(bleu[3])
    if meteor:
        try:
            out["meteor"] = _meteor(gts, res)
        except Exception as exc:  # the jar needs Java and 2 GB of heap; the rest is still worth reporting
            warnings.warn(f"METEOR failed and is left out ({exc.__class__.__name__}: {exc})", stacklevel=2)
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    out["num_images"] = len(references)
    return out


def _meteor(gts: Mapping[Hashable, list[str]], res: Mapping[Hashable, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    _java()
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        # The scorer keeps a Java process; end it now rather than at garbage collection.
        # (its own __del__ repeats these steps, which is harmless on an ended process).
        with scorer.lock:
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    return float(score)
