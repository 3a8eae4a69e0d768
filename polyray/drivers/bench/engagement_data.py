"""Synthetic social-media replies with a learnable engagement score: what ``polyray bench reward`` trains
its engagement model on, and the generator of the tests' ``engagement.jsonl`` fixture (deterministic).

Each row is ``{prompt, response, engagement}``. A prompt is a short post on one of a
dozen topics (five phrasings each, so held-out posts are new phrasings of known topics); a reply is assembled from parts whose presence drives engagement:

    engagement = 2.0 + 1.6·on_topic + 1.2·warm − 1.8·rude + 0.8·asks_question
                 + 0.6·specific_detail + noise,   noise ~ N(0, 0.6)

so a model that reads the reply (and whether it matches the post) can rank replies,
while a constant predictor cannot. Scores are rounded to 2 decimals; the file stays
well under 300 KB.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# topic: (posts, detail, thing, aspect); a post is one of five phrasings of the topic
TOPICS = {
    "running": (
        (
            "I finally ran my first 10k this morning!",
            "Ran 10 km without stopping for the first time.",
            "New personal best on my morning run today.",
            "Signed up for my first half marathon.",
            "My running streak just hit 100 days.",
        ),
        "your pacing",
        "a 10k",
        "the last two kilometres",
    ),
    "cooking": (
        (
            "Tried baking sourdough for the first time today.",
            "My first loaf of homemade bread came out great.",
            "Spent the whole weekend perfecting a pasta recipe.",
            "Cooked dinner for twelve people last night.",
            "Finally nailed my grandmother's curry recipe.",
        ),
        "the starter",
        "sourdough",
        "the crust",
    ),
    "coding": (
        (
            "Spent all night chasing a race condition in our scheduler.",
            "Shipped my first open-source pull request today.",
            "Rewrote our build system and it is twice as fast.",
            "Finally fixed a memory leak that took a week to find.",
            "Our team launched the new API this afternoon.",
        ),
        "the lock ordering",
        "that bug",
        "the scheduler",
    ),
    "gardening": (
        (
            "My tomato plants are finally producing fruit.",
            "Planted a whole vegetable bed this weekend.",
            "The roses I planted last spring are blooming.",
            "Harvested our first basket of potatoes today.",
            "Built a raised garden bed from scrap wood.",
        ),
        "the watering",
        "tomatoes",
        "the soil",
    ),
    "travel": (
        (
            "Just landed in Lisbon for a week of exploring.",
            "Took the night train across the Alps.",
            "Back home after a month of backpacking.",
            "Spent the day wandering the old streets of Porto.",
            "First solo trip abroad starts tomorrow.",
        ),
        "the trams",
        "Lisbon",
        "the old town",
    ),
    "music": (
        (
            "Learned my first full song on the guitar.",
            "Played my first open mic night yesterday.",
            "Finally got through that piano piece without mistakes.",
            "Wrote and recorded my first song.",
            "Our band played its first real gig tonight.",
        ),
        "the chord changes",
        "guitar",
        "the strumming",
    ),
    "reading": (
        (
            "Finished a 900-page novel over the holidays.",
            "Read fifty books this year.",
            "Started a book club with my neighbours.",
            "Just finished the last book of a long fantasy series.",
            "Reading a classic novel for the first time.",
        ),
        "the ending",
        "that novel",
        "the main character",
    ),
    "photography": (
        (
            "Shot the sunrise over the lake with my new lens.",
            "Sold my first landscape print today.",
            "Spent the evening photographing the city lights.",
            "Got a great shot of an eagle this morning.",
            "My photo was picked for the local exhibition.",
        ),
        "the exposure",
        "that lens",
        "the colours",
    ),
    "chess": (
        (
            "Won my first rated chess tournament game today.",
            "Beat my coach at chess for the first time.",
            "My chess rating just crossed 1500.",
            "Solved a very hard chess puzzle this morning.",
            "Played in my first over-the-board chess club night.",
        ),
        "the endgame",
        "chess",
        "the opening",
    ),
    "cycling": (
        (
            "Rode 100 km for charity this weekend.",
            "Climbed the big hill on my bike without stopping.",
            "Commuted by bike every day this month.",
            "Finished my first cycling race today.",
            "Built my own bike from spare parts.",
        ),
        "the climbs",
        "a century ride",
        "the headwind",
    ),
    "pets": (
        (
            "We adopted a rescue dog last week.",
            "Our new puppy slept through the night.",
            "Taught my dog to fetch the newspaper.",
            "Brought home two kittens from the shelter.",
            "Our old cat turned eighteen today.",
        ),
        "the first walks",
        "rescue dogs",
        "the crate training",
    ),
    "climbing": (
        (
            "Sent my first V5 boulder problem at the gym.",
            "Climbed my first outdoor route today.",
            "Finally finished the hardest wall at my gym.",
            "Went lead climbing for the first time.",
            "Reached the top of the big crag this weekend.",
        ),
        "the crux",
        "bouldering",
        "the heel hook",
    ),
}
WARM = [
    "Congratulations, that is wonderful!",
    "This made my day, well done!",
    "So happy for you, amazing work!",
    "What a great achievement, truly inspiring!",
]
NEUTRAL = ["Okay.", "Noted.", "I saw this.", "Fine, I guess."]
RUDE = ["Nobody cares about this.", "This is boring and pointless.", "Honestly, who asked?", "What a waste of time."]
QUESTIONS = [
    "How did you handle {d}?",
    "What was the hardest part about {t}?",
    "Any tips for someone new to {t}?",
    "How long did it take you to get {d} right?",
]
DETAILS = [
    "I remember struggling with {d} too.",
    "In my experience {d} is where most people give up.",
    "Paying attention to {d} changed everything for me.",
]
OFF_TOPIC = [
    "Anyway, did anyone watch the game last night?",
    "My printer jammed again today.",
    "I am thinking about repainting my kitchen.",
    "The traffic downtown was terrible this morning.",
]


def make_row(rng: random.Random, topics: list[str]) -> dict:
    topic = rng.choice(topics)
    posts, detail, thing, aspect = TOPICS[topic]
    post = rng.choice(posts)
    on_topic = rng.random() < 0.6
    tone = rng.choices(["warm", "neutral", "rude"], weights=[0.4, 0.35, 0.25])[0]
    question = rng.random() < 0.4
    specific = on_topic and rng.random() < 0.5
    parts = [rng.choice({"warm": WARM, "neutral": NEUTRAL, "rude": RUDE}[tone])]
    if on_topic:
        if specific:
            parts.append(rng.choice(DETAILS).format(d=rng.choice([detail, aspect])))
        if question:
            parts.append(rng.choice(QUESTIONS).format(d=detail, t=thing))
    else:
        other = TOPICS[rng.choice([t for t in topics if t != topic])]
        parts.append(rng.choice(OFF_TOPIC))
        if question:
            parts.append(rng.choice(QUESTIONS).format(d=other[1], t=other[2]))
    # word order should not be the only cue
    if rng.random() < 0.2:
        rng.shuffle(parts)
    score = (
        2.0
        + 1.6 * on_topic
        + 1.2 * (tone == "warm")
        - 1.8 * (tone == "rude")
        + 0.8 * question
        + 0.6 * specific
        + rng.gauss(0.0, 0.6)
    )
    return {"prompt": post, "response": " ".join(parts), "engagement": round(score, 2)}


def engagement_rows(rows: int = 600, seed: int = 0) -> list[dict]:
    """``rows`` rows ``{prompt, response, engagement}``, the same for the same seed."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    return [make_row(rng, topics) for _ in range(rows)]


def write_engagement_jsonl(path: Path, rows: int = 600, seed: int = 0) -> Path:
    """:func:`engagement_rows` as a JSONL file at ``path``."""
    with Path(path).open("w") as f:
        for row in engagement_rows(rows, seed):
            f.write(json.dumps(row) + "\n")
    return Path(path)
