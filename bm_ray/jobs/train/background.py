"""Generic non-topical text ("not news") that training may mix in with a flat target.

A model fine-tuned on news only answers confidently on anything, site boilerplate included, so a
page's navigation, consent and paywall windows would out-vote its article. `bm-ray train
--background-rows N` adds N texts drawn from :data:`BACKGROUND_PHRASES` to the training rows with a
uniform target over the labels (label id :data:`BACKGROUND_LABEL_ID`): the model learns to answer
flat on such text, and the engine's confidence-weighted window aggregation then counts those windows
little. The phrases were written for this purpose; none comes from a data set.

`--boilerplate-rows N` teaches the other half: N training rows are also trained on as they sit in a
scraped page (:func:`behind_boilerplate`: after a few of these phrases, sometimes before more), with
their own label, so a window holding page furniture *and* the article is read by the article.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

BACKGROUND_LABEL_ID = -1
"""Label id of a background row in the tokenised training data: its target is uniform over the labels."""

BACKGROUND_PHRASES: tuple[str, ...] = (
    # navigation and page furniture
    "Main menu",
    "Jump to content",
    "Back to top",
    "Homepage > Latest > This story",
    "News Sport Money Tech Life Arts Travel Weather",
    "Politics | Economy | Football | Gadgets | Film | Music | Science",
    "Search the site",
    "Open navigation. Close navigation.",
    "Previous article. Next article.",
    "Most popular this week",
    "Latest headlines from our newsroom",
    "Watch: video highlights and interviews",
    "Live blog: updates throughout the day",
    "Photo gallery: 24 pictures",
    "Click here to load more stories",
    "My profile. Saved items. Notifications. Sign out.",
    # consent and privacy
    "We and our vendors use cookies to personalise content and ads, provide social media features "
    "and analyse traffic.",
    "Accept cookies. Decline. Customise settings.",
    "Necessary cookies enable core functionality such as security, network management and accessibility.",
    "Analytics cookies help us understand how visitors interact with the website.",
    "To view this content you need to enable functional cookies in your privacy settings.",
    "We value your privacy. Select an option to continue.",
    "Data is processed on the basis of legitimate interest; you may object at any time.",
    # subscriptions, paywalls, newsletters
    "This content is for subscribers only.",
    "Unlock this story for just one pound for your first month.",
    "Join thousands of readers who get our weekly digest every Sunday.",
    "Sign in or create an account to continue reading.",
    "Thank you for reading. Please consider a contribution to keep our reporting free.",
    "Your free trial has ended. Choose a plan to continue.",
    "Download our app for breaking alerts on your phone.",
    "Get our best stories in your inbox. Sign up now.",
    "Gift this article to a friend.",
    # legal, footer, ads, comments
    "Copyright 2024. Registered in England and Wales. Company number 000000.",
    "About us | Advertise with us | Work for us | Help centre | Site map",
    "Sponsored content from our partners.",
    "Advertising feature. Scroll to continue with content.",
    "Comments are closed for this article.",
    "Community standards: be respectful, stay on topic, no spam.",
    "Terms and conditions. Privacy policy. Do not sell my personal information.",
    "Prices correct at the time of publishing. We may receive a fee for purchases made through links.",
    "Report an issue with this page.",
    "Follow us: Facebook, Instagram, YouTube, LinkedIn",
    "Share on social media. Copy the link. Send by email.",
    "Listen to this story. Text size: small, medium, large.",
    "Published 3 hours ago. Last modified 1 hour ago.",
)
"""Generic site text written for training, distinct from the benchmark's boilerplate (bench_windows)."""


def background_texts(n: int, seed: int = 0, max_phrases: int = 8) -> list[str]:
    """`n` background texts of 1 to `max_phrases` phrases each (seeded), from one line up to a window."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        k = int(rng.integers(1, max_phrases + 1))
        picked = rng.choice(len(BACKGROUND_PHRASES), size=min(k, len(BACKGROUND_PHRASES)), replace=False)
        texts.append("\n".join(BACKGROUND_PHRASES[i] for i in picked))
    return texts


def behind_boilerplate(batch: pa.Table, seed: int = 0) -> pa.Table:
    """Ray Data task: each row's `text` as it would sit in a scraped page, every other column kept.

    The text follows 3 to 8 background phrases and, for half the rows, comes before 1 to 3 more.
    Seeded by `seed` and the batch's texts, so a rerun over the same rows builds the same pages.
    """
    texts = batch.column("text").to_pylist()
    rng = np.random.default_rng([seed, zlib.crc32("\x00".join(texts).encode("utf-8"))])

    def phrases(low: int, high: int) -> str:
        picked = rng.choice(len(BACKGROUND_PHRASES), size=int(rng.integers(low, high + 1)), replace=False)
        return "\n".join(BACKGROUND_PHRASES[i] for i in picked)

    paged = []
    for text in texts:
        page = f"{phrases(3, 8)}\n{text}"
        paged.append(f"{page}\n{phrases(1, 3)}" if rng.random() < 0.5 else page)
    return batch.set_column(batch.schema.get_field_index("text"), "text", pa.array(paged, pa.string()))
