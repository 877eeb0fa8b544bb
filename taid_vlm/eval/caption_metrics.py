"""COCO caption metrics: pycocoevalcap when Java runs, a labelled pure-Python fallback when not.

pycocoevalcap is the reference every captioning paper reports against (docs/EVALUATION.md), so it is
used whenever it can be: Stanford PTBTokenizer, BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D. Its
tokenizer and METEOR are Java programs; without Java the fallback re-implements the tokenizer
(approximately), BLEU, ROUGE-L and CIDEr-D (to float precision on the same tokens), and reports
METEOR as None rather than a number that would not be METEOR. Results always say which backend
and tokenizer produced them. SPICE needs a CoreNLP download, so it is reported unavailable,
never as a fake 0.

All scores are x100 (CIDEr-D's own x10 included: pycocoevalcap 0.600 -> 60.0).
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import subprocess
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from .text_metrics import lcs_length

BACKENDS = ("auto", "pycocoevalcap", "python")
SPICE_STATUS = "unavailable offline (needs CoreNLP download)"
FALLBACK_METEOR_STATUS = "not computed: METEOR 1.5 is a Java program; the python fallback has none"
MAX_N = 4
CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2

# Tokens pycocoevalcap drops after PTB tokenisation (upper-case bracket tokens included as it
# lists them, although its lower-casing tokenizer emits -lrb- and so keeps those).
COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


# --------------------------------------------------------------------------- inputs


def _validate(predictions: Mapping[Any, str | None], references: Mapping[Any, Sequence[str]]) -> list[Any]:
    """Ids in reference order; every id needs a prediction slot (None = failed generation)."""
    if not references:
        raise ValueError("caption_scores: no references given; the evaluation set is empty")
    missing = [i for i in references if i not in predictions]
    extra = [i for i in predictions if i not in references]
    if missing or extra:
        raise ValueError(
            f"caption_scores: prediction and reference ids differ (missing predictions for "
            f"{missing[:5]}, predictions without references for {extra[:5]}); pass None for a "
            f"failed generation instead of leaving it out"
        )
    for i, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise ValueError(
                f"caption_scores: image {i!r} needs a list of non-empty reference captions, got {refs!r}"
            )
        pred = predictions[i]
        if pred is not None and not isinstance(pred, str):
            raise ValueError(
                f"caption_scores: prediction for {i!r} must be a string or None, got {type(pred).__name__}"
            )
    return list(references)


def _one_line(text: str | None) -> str:
    """Collapse every kind of whitespace (incl. \\r, \\x0b, \\u2028): the Java tokenizer is fed one
    caption per line, and a stray line break would shift every caption after it."""
    return " ".join((text or "").split())


def _is_empty(text: str | None) -> bool:
    return text is None or not text.strip()


# --------------------------------------------------------------------------- Java probe


@functools.lru_cache(maxsize=1)
def java_available() -> bool:
    """True when a ``java`` on PATH actually starts (a broken JRE counts as absent)."""
    java = shutil.which("java")
    if java is None:
        return False
    try:
        probe = subprocess.run([java, "-version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"caption_scores: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "python":
        return "python"
    if java_available():
        return "pycocoevalcap"
    if backend == "pycocoevalcap":
        raise RuntimeError(
            "caption_scores: backend='pycocoevalcap' needs Java on PATH (its tokenizer and METEOR are "
            "Java); install a JRE, e.g. `apt-get install default-jre-headless`, or use backend='python'"
        )
    return "python"


# --------------------------------------------------------------------------- pycocoevalcap


@contextmanager
def _meteor() -> Iterator[Any]:
    """pycocoevalcap's Meteor starts a JVM and only stops it in ``__del__``; close it here."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        yield scorer
    finally:
        proc = scorer.meteor_p
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:  # a JVM that died mid-write leaves a broken pipe behind
                pass
        proc.kill()
        proc.wait(timeout=30)
        # A failure inside compute_score leaves its lock held, and Meteor.__del__ takes that
        # lock: release it or garbage collection would block forever.
        if scorer.lock.locked():
            scorer.lock.release()


def _pycoco_scores(ids: list[Any], hyps: dict[Any, str], refs: dict[Any, list[str]]) -> tuple[dict, dict]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs[i]] for i in ids})
    res = tokenizer.tokenize({i: [{"caption": hyps[i]}] for i in ids})
    bleu, _ = Bleu(MAX_N).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider(sigma=CIDER_SIGMA).compute_score(gts, res)
    # METEOR's line protocol separates fields with '|||'; pycocoevalcap only cleans hypotheses.
    meteor_gts = {i: [r.replace("|||", "") for r in gts[i]] for i in ids}
    with _meteor() as scorer:
        meteor, meteor_each = scorer.compute_score(meteor_gts, res)
    corpus = {f"BLEU-{n + 1}": bleu[n] for n in range(MAX_N)}
    corpus.update({"METEOR": meteor, "ROUGE-L": float(rouge), "CIDEr": float(cider)})
    order = list(gts)  # the order pycocoevalcap iterated in
    each = {
        i: {"METEOR": meteor_each[k], "ROUGE-L": float(rouge_each[k]), "CIDEr": float(cider_each[k])}
        for k, i in enumerate(order)
    }
    return corpus, each


# --------------------------------------------------------------------------- Python fallback

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc inc ltd co corp mt ft no approx dept est fig "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_SPLIT_PREFIXES = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na"}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_INITIALS = re.compile(r"^(?:[a-z]\.)+$")


def _split_word(word: str) -> list[str]:
    """PTB rules for one whitespace-free chunk: edge quotes/periods off, clitics split."""
    if word in _SPLIT_PREFIXES:
        return _SPLIT_PREFIXES[word].split()
    lead: list[str] = []
    trail: list[str] = []
    while word[:1] == "'" and len(word) > 1:
        lead.append("'")
        word = word[1:]
    while len(word) > 1 and _ends_with_detachable(word):
        trail.insert(0, word[-1])
        word = word[:-1]
    clitic = _CLITIC.match(word)
    core = [clitic.group(1), clitic.group(2)] if clitic else [word]
    return lead + core + trail


def _ends_with_detachable(word: str) -> bool:
    """A closing quote, or a sentence period that is not part of an abbreviation or '...'."""
    if word.endswith("'"):
        return True
    if word.endswith(".") and not word.endswith("..."):
        return not (_INITIALS.match(word) or word[:-1] in _ABBREVIATIONS)
    return False


def ptb_like_tokenize(text: str | None) -> list[str]:
    """Approximate Stanford PTBTokenizer (-lowerCase) followed by COCO's punctuation drop.

    Agrees with the Java tokenizer on ordinary captions (clitics, decimals, 1,000, hyphenated
    words, brackets -> -lrb-); rare constructions (e.g. rock'n'roll) may differ, which is why
    results from this tokenizer are labelled and not mixed with Java ones.
    """
    text = _one_line(text).lower().replace('"', " ").replace("`", " ")
    for bracket, token in _BRACKETS.items():
        text = text.replace(bracket, token)
    text = re.sub(r"\.\.\.", " ... ", text)
    text = re.sub(r"--", " -- ", text)
    text = re.sub(r"[?!]+", lambda m: f" {m.group(0)} ", text)
    text = re.sub(r"[;#$%]", lambda m: f" {m.group(0)} ", text)
    text = re.sub(r"(?<!\d)[,:]|[,:](?!\d)", lambda m: f" {m.group(0)} ", text)
    tokens = [t for chunk in text.split() for t in _split_word(chunk)]
    return [t for t in tokens if t not in COCO_PUNCTUATION]


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[k : k + n]) for k in range(len(tokens) - n + 1))


def _bleu(hyps: list[list[str]], refs: list[list[list[str]]]) -> list[float]:
    """Corpus BLEU-1..4: clipped n-gram counts summed over the corpus, brevity penalty against the
    closest reference length per sentence (ties -> shorter). A zero n-gram precision gives exactly
    0 (pycocoevalcap's 1e-15 smoothing would print a tiny positive number instead)."""
    correct = [0] * MAX_N
    guessed = [0] * MAX_N
    hyp_len = ref_len = 0
    for hyp, hyp_refs in zip(hyps, refs):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in hyp_refs)[1]
        for n in range(1, MAX_N + 1):
            counts = _ngrams(hyp, n)
            best: Counter = Counter()
            for r in hyp_refs:
                best |= _ngrams(r, n)
            correct[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            guessed[n - 1] += max(0, len(hyp) - n + 1)
    brevity = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0)
    scores, log_sum = [], 0.0
    for n in range(MAX_N):
        if correct[n] == 0:
            scores.extend([0.0] * (MAX_N - n))
            break
        log_sum += math.log(correct[n] / guessed[n])
        scores.append(brevity * math.exp(log_sum / (n + 1)))
    return scores


def _rouge_l(hyp: list[str], hyp_refs: list[list[str]]) -> float:
    """COCO's ROUGE-L: best precision and best recall over the references (possibly from different
    references), combined with beta 1.2."""
    if not hyp:
        return 0.0
    lcs = [lcs_length(hyp, r) for r in hyp_refs]
    precision = max(l / len(hyp) for l in lcs)
    recall = max(l / len(r) for l, r in zip(lcs, hyp_refs) if r) if any(hyp_refs) else 0.0
    if precision == 0 or recall == 0:
        return 0.0
    b2 = ROUGE_BETA**2
    return (1 + b2) * precision * recall / (recall + b2 * precision)


def _cider_d(hyps: list[list[str]], refs: list[list[list[str]]]) -> list[float]:
    """CIDEr-D per image: tf-idf n-gram vectors (idf from the evaluated images' references),
    hypothesis weights clipped at the reference's, Gaussian length penalty (sigma 6), mean over
    n = 1..4 and over references, x10."""
    n_images = len(refs)
    doc_freq: Counter = Counter()
    for image_refs in refs:
        doc_freq.update({g for r in image_refs for n in range(1, MAX_N + 1) for g in _ngrams(r, n)})
    log_n = math.log(float(n_images))

    def vectors(tokens: list[str]) -> list[dict[tuple, float]]:
        return [
            {g: tf * (log_n - math.log(max(1.0, doc_freq[g]))) for g, tf in _ngrams(tokens, n).items()}
            for n in range(1, MAX_N + 1)
        ]

    def norm(vec: dict[tuple, float]) -> float:
        return math.sqrt(sum(v * v for v in vec.values()))

    scores = []
    for hyp, image_refs in zip(hyps, refs):
        hyp_vecs = vectors(hyp)
        total = 0.0
        for r in image_refs:
            penalty = math.exp(-((len(hyp) - len(r)) ** 2) / (2 * CIDER_SIGMA**2))
            for hv, rv in zip(hyp_vecs, vectors(r)):
                denominator = norm(hv) * norm(rv)
                if denominator:
                    dot = sum(min(w, rv.get(g, 0.0)) * rv.get(g, 0.0) for g, w in hv.items())
                    total += penalty * dot / denominator
        scores.append(10.0 * total / (MAX_N * len(image_refs)))
    return scores


def _python_scores(ids: list[Any], hyps: dict[Any, str], refs: dict[Any, list[str]]) -> tuple[dict, dict]:
    tok_hyps = [ptb_like_tokenize(hyps[i]) for i in ids]
    tok_refs = [[ptb_like_tokenize(r) for r in refs[i]] for i in ids]
    bleu = _bleu(tok_hyps, tok_refs)
    rouge_each = [_rouge_l(h, rs) for h, rs in zip(tok_hyps, tok_refs)]
    cider_each = _cider_d(tok_hyps, tok_refs)
    corpus = {f"BLEU-{n + 1}": bleu[n] for n in range(MAX_N)}
    corpus.update(
        {"METEOR": None, "ROUGE-L": sum(rouge_each) / len(ids), "CIDEr": sum(cider_each) / len(ids)}
    )
    each = {i: {"METEOR": None, "ROUGE-L": r, "CIDEr": c} for i, r, c in zip(ids, rouge_each, cider_each)}
    return corpus, each


# --------------------------------------------------------------------------- entry point


def _x100(value: float | None) -> float | None:
    return None if value is None else 100.0 * float(value)


def caption_scores(
    predictions: Mapping[Any, str | None],
    references: Mapping[Any, Sequence[str]],
    backend: str = "auto",
) -> dict[str, Any]:
    """Corpus caption metrics x100 plus per-image ROUGE-L / CIDEr (/ METEOR) x100.

    ``backend``: "auto" (pycocoevalcap when Java runs, else the fallback), "pycocoevalcap"
    (error without Java) or "python" (force the fallback). A None/blank prediction is scored as
    the empty caption (0 on every per-image metric, and it still lowers the corpus BLEU brevity
    term) and counted in ``n_empty``; no image is ever dropped.
    """
    ids = _validate(predictions, references)
    chosen = _resolve_backend(backend)
    hyps = {i: _one_line(predictions[i]) for i in ids}
    refs = {i: [_one_line(r) for r in references[i]] for i in ids}
    if chosen == "pycocoevalcap":
        corpus, each = _pycoco_scores(ids, hyps, refs)
        labels = {"backend": "pycocoevalcap", "tokenizer": "stanford-ptb (java)"}
    else:
        corpus, each = _python_scores(ids, hyps, refs)
        labels = {
            "backend": "python-fallback",
            "tokenizer": "ptb-like (python approximation)",
            "meteor_status": FALLBACK_METEOR_STATUS,
        }
    result: dict[str, Any] = {name: _x100(v) for name, v in corpus.items()}
    result.update({"SPICE": None, "spice_status": SPICE_STATUS, **labels})
    result["n"] = len(ids)
    result["n_empty"] = sum(_is_empty(predictions[i]) for i in ids)
    result["per_sample"] = {i: {k: _x100(v) for k, v in each[i].items()} for i in ids}
    return result
