"""Long-article benchmark: plain articles vs the same articles as scraped pages, truncated vs windowed.

Pages are built here from labelled AG News rows: the article (title + description) behind 250–400
tokens of site boilerplate (menus, cookie notices, subscription prompts, legal and share lines)
assembled from :data:`BOILERPLATE` — phrases written for this benchmark, never taken from any data
set. Each page draws its own seeded combination, so no two pages share the same boilerplate.

One run reports, on the same rows and model:

- accuracy of the plain articles, of the pages in truncate mode (the model reads only the first
  ``max_length`` tokens: boilerplate) and of the pages in window mode under every aggregation rule;
- optionally BBC full articles (one file per article, deduplicated by content) truncated vs windowed,
  BBC classes mapped onto the model's labels where a counterpart exists (``--bbc-labels``);
- short-text throughput of the engine in window vs truncate mode (rounds interleaved; the ratio is
  the target: within ±5%).

Every rule's accuracy comes from the same window probabilities (one forward pass per window), which
is what :meth:`bm_ray.model.engine.Predictor.score_texts` aggregates under that rule.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from bm_ray.model.engine import Predictor, aggregate_windows
from bm_ray.specs import LongTextOptions, WindowAggregation

BOILERPLATE: dict[str, list[str]] = {
    "menu": [
        "Home | News | World | Business | Sport | Technology | Science | Health | Opinion | Video",
        "Skip to main content. Skip to navigation. Accessibility help.",
        "Menu Search Sign in Register My account Newsletters Podcasts Puzzles",
        "Sections: Latest, Most read, Local, National, Weather, Travel, Culture, Lifestyle",
        "Trending now: live updates, photo galleries, explainers, fact checks",
        "Edition: International | United States | United Kingdom | Asia | Africa",
        "Follow us on all your favourite platforms and never miss a story",
        "You are here: Front page > Stories > Article",
        "Top stories  Editor's picks  Just in  Watch live  Listen",
        "Log in to save articles and follow the topics you care about",
    ],
    "cookies": [
        "We use cookies and similar technologies to run this website, remember your settings and "
        "measure how it is used. Some are strictly necessary; others help us improve the service.",
        "By clicking Accept all you agree to the storing of cookies on your device to enhance site "
        "navigation, analyse site usage and assist in our marketing efforts.",
        "Manage preferences. Reject non-essential. Accept all. You can change your choice at any time "
        "under Privacy settings at the bottom of every page.",
        "Our partners process personal data such as device identifiers and browsing data to deliver "
        "personalised advertising and content, ad and content measurement and audience insights.",
        "This site stores small files on your computer. Continue browsing if you are happy with this, "
        "or find out how to manage them in our cookie policy.",
        "Your privacy matters to us. Please review the options below before you continue reading.",
    ],
    "subscribe": [
        "Subscribe today and get unlimited access on any device. Cancel anytime.",
        "You have read three of your five free articles this month. Create a free account to keep reading.",
        "Support independent journalism: become a member from just a few coins a week.",
        "Sign up for our morning briefing, delivered to your inbox before breakfast every weekday.",
        "Already a subscriber? Log in here. Not yet? Start your trial now, no commitment required.",
        "Get the app: read offline, receive alerts and listen to articles on the go.",
        "Enter your email address to receive our daily newsletter. You can unsubscribe at any time.",
        "Special offer: half price for your first year. Terms and conditions apply.",
    ],
    "legal": [
        "All rights reserved. No part of this site may be reproduced without written permission.",
        "Terms of use | Privacy notice | Cookie policy | Accessibility statement | Contact us | Careers",
        "Advertisement. Content continues below.",
        "The views expressed in comments are those of their authors. Please read our community guidelines "
        "before posting, and report anything that breaks them.",
        "This page may contain affiliate links; we may earn a small commission at no extra cost to you.",
        "Corrections and clarifications: if you spot an error, please let the editors know.",
    ],
    "share": [
        "Share this article: Email | Copy link | Print",
        "Comments (0). Be the first to comment. Sign in to join the conversation.",
        "Reading time: 4 minutes. Updated a few minutes ago.",
        "Image caption: file photo. Image source: handout.",
        "Related topics. Save. Share. Listen to this article.",
        "More from this section. Recommended for you. Sponsored stories.",
    ],
}
"""Site boilerplate written for this benchmark: navigation, consent, paywall, legal and share text."""

BOILERPLATE_TOKENS = (250, 400)
"""Token range of each page's boilerplate (inclusive)."""

DEFAULT_BBC_LABELS = "business=3,sport=2,tech=4,politics=1"
"""BBC folders mapped onto the AG News labels (3 Business, 2 Sports, 4 Sci/Tech, 1 World)."""


def boilerplate(
    rng: np.random.Generator, tokenizer: Any, tokens: tuple[int, int] = BOILERPLATE_TOKENS
) -> str:
    """One page's boilerplate: phrases drawn without replacement until the token target is met."""
    target = int(rng.integers(tokens[0], tokens[1] - 40))  # the last phrase may overshoot by < 40 tokens
    phrases = [phrase for kind in BOILERPLATE.values() for phrase in kind]
    order = rng.permutation(len(phrases))
    picked: list[str] = []
    count = 0
    for index in order:
        picked.append(phrases[index])
        count += len(tokenizer(phrases[index], add_special_tokens=False)["input_ids"])
        if count >= target:
            break
    text = "\n".join(picked)
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not tokens[0] <= n <= tokens[1]:
        raise ValueError(f"boilerplate of {n} tokens is outside {tokens}: adjust BOILERPLATE")
    return text


def page(article: str, rng: np.random.Generator, tokenizer: Any) -> str:
    """The article as a scraped page shows it: behind its own draw of boilerplate."""
    return boilerplate(rng, tokenizer) + "\n" + article


def read_ag_rows(path: str | Path, skip_rows: int, rows: int) -> tuple[list[str], list[str]]:
    """(texts, labels) of `rows` AG News CSV rows after the first `skip_rows` (the training rows).

    Grouped: rows whose description also occurs in the skipped rows are left out, so an article
    re-published under another title cannot be scored by a model that trained on it.
    """
    with Path(path).open(encoding="utf-8", newline="") as f:
        records = list(csv.DictReader(f))
    trained = {r["Description"].strip() for r in records[:skip_rows]}
    kept = [r for r in records[skip_rows:] if r["Description"].strip() not in trained][:rows]
    if not kept:
        raise ValueError(f"{path}: no rows after the first {skip_rows}")
    return [f"{r['Title']}\n{r['Description']}" for r in kept], [r["Class Index"] for r in kept]


def read_bbc(root: str | Path, label_map: dict[str, str]) -> tuple[list[str], list[str]]:
    """(texts, labels) of the BBC articles of the mapped folders, exact duplicates dropped."""
    texts, labels, seen = [], [], set()
    for folder, label in sorted(label_map.items()):
        for path in sorted((Path(root) / folder).glob("*.txt")):
            raw = path.read_bytes()
            digest = hashlib.sha256(raw).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            texts.append(raw.decode("utf-8", errors="replace"))
            labels.append(label)
    if not texts:
        raise ValueError(f"{root}: no articles in folders {', '.join(label_map)}")
    return texts, labels


def parse_label_map(value: str) -> dict[str, str]:
    """`folder=label,...` → mapping."""
    pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"--bbc-labels {value!r}: expected folder=label pairs, e.g. {DEFAULT_BBC_LABELS}")
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass
class ModeAccuracy:
    """Accuracy of one way of reading a set of texts, with its windows and mean top score."""

    accuracy: float
    mean_score: float
    windows: int

    def to_json(self) -> dict[str, float | int]:
        """Rounded figures."""
        return {
            "accuracy": round(self.accuracy, 4),
            "mean_score": round(self.mean_score, 4),
            "windows": self.windows,
        }


def accuracy_by_mode(
    predictor: Predictor, texts: Sequence[str], labels: Sequence[str]
) -> dict[str, ModeAccuracy]:
    """Accuracy of `texts` truncated and windowed under every aggregation rule (one pass per window)."""
    index = {label: i for i, label in enumerate(predictor.labels)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not the model's labels {predictor.labels}")
    truth = np.asarray([index[label] for label in labels])
    options = predictor.long_text

    def scored(probs: np.ndarray, windows: int) -> ModeAccuracy:
        return ModeAccuracy(float(np.mean(probs.argmax(1) == truth)), float(probs.max(1).mean()), windows)

    results = {"truncate": scored(predictor.predict_tokens(predictor.encoder.encode(texts)), len(texts))}
    windows = predictor.encoder.encode_windows(texts, options.window_stride, options.max_windows)
    window_probs = predictor.predict_tokens(windows.sequences)
    for rule in get_args(WindowAggregation):
        probs = aggregate_windows(window_probs, windows.counts, rule)
        results[f"window:{rule}"] = scored(probs, int(windows.counts.sum()))
    return results


def rows_per_second(predictor: Predictor, texts: Sequence[str]) -> float:
    """Engine rows/s over `texts` (tokenisation included)."""
    started = time.perf_counter()
    predictor.predict_proba(texts)
    return len(texts) / (time.perf_counter() - started)


def throughput(model: str, texts: Sequence[str], batch_size: int, rounds: int) -> dict[str, Any]:
    """Short-text rows/s in truncate vs window mode: rounds interleaved, median per mode, and the ratio."""
    modes = {
        mode: Predictor.load(model, batch_size, "fp32", long_text=LongTextOptions(long_text=mode))
        for mode in ("truncate", "window")
    }
    for predictor in modes.values():
        predictor.predict_proba(texts[: batch_size * 4])  # trace and warm both before timing
    timings: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode, predictor in modes.items():
            timings[mode].append(rows_per_second(predictor, texts))
    median = {mode: float(np.median(values)) for mode, values in timings.items()}
    return {
        "rows": len(texts),
        "rounds": rounds,
        "rows_per_s": {mode: round(value, 1) for mode, value in median.items()},
        "all_rows_per_s": {mode: [round(v, 1) for v in values] for mode, values in timings.items()},
        "window_vs_truncate": round(median["window"] / median["truncate"], 4),
    }


def bench_windows(
    model: str,
    ag_csv: str | Path,
    *,
    skip_rows: int = 0,
    rows: int = 1000,
    bbc: str | Path | None = None,
    bbc_labels: str = DEFAULT_BBC_LABELS,
    batch_size: int = 32,
    throughput_rows: int = 2000,
    rounds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the benchmark (module docstring) and return its figures."""
    predictor = Predictor.load(model, batch_size, "fp32")
    texts, labels = read_ag_rows(ag_csv, skip_rows, rows)
    rng = np.random.default_rng(seed)
    tokenizer = predictor.encoder.tokenizer
    pages = [page(text, rng, tokenizer) for text in texts]
    page_tokens = [len(ids) for ids in tokenizer(pages, add_special_tokens=False, verbose=False)["input_ids"]]
    plain = accuracy_by_mode(predictor, texts, labels)["truncate"]
    on_pages = accuracy_by_mode(predictor, pages, labels)
    result: dict[str, Any] = {
        "model": model,
        "max_length": predictor.info.max_length,
        "window_stride": predictor.long_text.window_stride or "default (half a window)",
        "rows": len(texts),
        "skip_rows": skip_rows,
        "page_tokens": {
            "min": min(page_tokens),
            "median": int(np.median(page_tokens)),
            "max": max(page_tokens),
        },
        "plain": plain.to_json(),
        "pages": {mode: figures.to_json() for mode, figures in on_pages.items()},
        "points_below_plain": {
            mode: round(100 * (plain.accuracy - figures.accuracy), 1) for mode, figures in on_pages.items()
        },
    }
    if bbc is not None:
        bbc_texts, bbc_truth = read_bbc(bbc, parse_label_map(bbc_labels))
        result["bbc"] = {
            "articles": len(bbc_texts),
            "labels": bbc_labels,
            **{
                mode: figures.to_json()
                for mode, figures in accuracy_by_mode(predictor, bbc_texts, bbc_truth).items()
            },
        }
    short = [texts[i % len(texts)] for i in range(throughput_rows)]
    result["throughput"] = throughput(model, short, batch_size, rounds)
    return result


def summary_table(result: dict[str, Any]) -> Any:
    """Side-by-side rendering: accuracy per way of reading, and the throughput ratio."""
    from rich.table import Table

    table = Table(
        title=f"bm-ray bench windows: {result['rows']} AG News rows, model window {result['max_length']}"
    )
    for column in ("texts", "reading", "accuracy", "vs plain (points)", "mean top score", "windows"):
        table.add_column(column)
    plain = result["plain"]
    table.add_row(
        "articles",
        "as is",
        f"{plain['accuracy']:.3f}",
        "",
        f"{plain['mean_score']:.3f}",
        str(plain["windows"]),
    )
    for mode, figures in result["pages"].items():
        gap = result["points_below_plain"][mode]
        table.add_row(
            "pages",
            mode,
            f"{figures['accuracy']:.3f}",
            f"{-gap:+.1f}",
            f"{figures['mean_score']:.3f}",
            str(figures["windows"]),
        )
    for mode, figures in result.get("bbc", {}).items():
        if isinstance(figures, dict):
            table.add_row(
                "BBC",
                mode,
                f"{figures['accuracy']:.3f}",
                "",
                f"{figures['mean_score']:.3f}",
                str(figures["windows"]),
            )
    speed = result["throughput"]
    rates = speed["rows_per_s"]
    table.caption = (
        f"short texts: window {rates['window']:.1f} rows/s vs truncate {rates['truncate']:.1f} rows/s "
        f"= ×{speed['window_vs_truncate']:.3f} (median of {speed['rounds']} interleaved rounds)"
    )
    return table
