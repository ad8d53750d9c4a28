"""Write the demo dataset: short customer-support messages labeled billing / shipping / technical.

The texts are composed from hand-written fragments with a fixed seed, so the files are reproducible and
the demo needs no download. Run `python examples/make_demo_data.py` to regenerate examples/demo/.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

OPENERS = [
    "",
    "Hi, ",
    "Hello, ",
    "Hey team, ",
    "Good morning, ",
    "Quick question: ",
    "Urgent: ",
    "Please help, ",
]
CLOSERS = [
    "",
    " Thanks.",
    " Thank you!",
    " Any idea?",
    " Please advise.",
    " This is frustrating.",
    " Cheers.",
]

TOPICS = {
    "billing": [
        "I was charged twice for my {plan} subscription",
        "my invoice for {month} shows the wrong amount",
        "can I get a refund for the {plan} plan",
        "the payment with my {card} card was declined",
        "why did my monthly bill go up in {month}",
        "please cancel the automatic renewal of my {plan} plan",
        "I need a receipt for the charge on {month} 3rd",
        "my {card} card was billed but the order shows unpaid",
        "how do I update the billing address on my account",
        "there is an unknown charge from you on my {card} statement",
        "the discount code was not applied to my {plan} invoice",
        "I want to switch from monthly to yearly billing",
    ],
    "shipping": [
        "my package has not arrived after {days} days",
        "the tracking number for my {item} does not work",
        "can you ship the {item} to a different address",
        "the courier left my {item} at the wrong door",
        "my order of a {item} arrived damaged in the box",
        "how long does delivery to {country} usually take",
        "the {item} I ordered is stuck in customs in {country}",
        "I received someone else's parcel instead of my {item}",
        "is express delivery available for the {item}",
        "the delivery window was missed twice this week",
        "my {item} shipment says delivered but nothing is here",
        "do you ship {item} orders to {country}",
    ],
    "technical": [
        "the app crashes when I open the {screen} screen",
        "I cannot log in since the update on my {device}",
        "the {screen} page keeps showing an error 500",
        "sync between my {device} and the website stopped working",
        "password reset emails never arrive",
        "the {device} app freezes after a few minutes",
        "two-factor codes are rejected on my {device}",
        "the {screen} screen is blank after I upgraded",
        "notifications stopped working on my {device}",
        "the export button on the {screen} page does nothing",
        "I get a timeout error when uploading files from my {device}",
        "the search on the {screen} page returns no results",
    ],
}
SLOTS = {
    "plan": ["premium", "basic", "family", "business", "student"],
    "month": ["January", "March", "April", "June", "September", "November"],
    "card": ["Visa", "Mastercard", "debit", "credit", "Amex"],
    "days": ["five", "ten", "twelve", "three", "eight"],
    "item": ["lamp", "laptop stand", "headphones", "coffee grinder", "backpack", "phone case"],
    "country": ["Canada", "Germany", "Japan", "Brazil", "Kenya", "Norway"],
    "screen": ["settings", "dashboard", "profile", "reports", "checkout"],
    "device": ["iPhone", "Android phone", "tablet", "laptop", "smart TV"],
}


def compose(rng: random.Random, template: str) -> str:
    body = template.format(**{k: rng.choice(v) for k, v in SLOTS.items()})
    text = rng.choice(OPENERS) + body + "."
    return text[0].upper() + text[1:] + rng.choice(CLOSERS)


def make_split(rng: random.Random, per_class: int) -> list[tuple[str, str]]:
    rows = [
        (compose(rng, rng.choice(templates)), label)
        for label, templates in TOPICS.items()
        for _ in range(per_class)
    ]
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


DEMO_DIR = Path(__file__).resolve().parent / "demo"


def main(out_dir: Path = DEMO_DIR) -> None:
    rng = random.Random(20261124)
    write_csv(out_dir / "train.csv", make_split(rng, per_class=100))
    write_csv(out_dir / "eval.csv", make_split(rng, per_class=30))
    with (out_dir / "predict.txt").open("w", encoding="utf-8") as f:
        for text, _ in make_split(rng, per_class=4):
            f.write(text + "\n")


if __name__ == "__main__":
    main()
