"""Prompts for self-distillation, evaluation and benchmarks: instruction templates x topics,
written for this project (nothing is downloaded). Every 8th topic is held out of
training, so held-out prompts share no topic with the training prompts."""

from __future__ import annotations

import random

TEMPLATES = (
    "What is {t}?", "Explain {t} to a ten-year-old.", "Write a short paragraph about {t}.",
    "Give me three facts about {t}.", "Why does {t} matter?", "What are the pros and cons of {t}?",
    "Write a haiku about {t}.", "How would you teach someone about {t}?",
    "Summarize the history of {t} in a few sentences.", "What is a common misconception about {t}?",
    "Write a short story that involves {t}.", "List some questions a student might ask about {t}.",
    "Compare {t} with something similar.", "Describe {t} in one sentence.",
    "What should a beginner know about {t}?", "Write an email to a friend about {t}.",
)
TOPICS = (
    "photosynthesis", "the moon", "volcanoes", "the water cycle", "gravity", "electricity",
    "the internet", "machine learning", "climate change", "the Roman Empire", "chess", "music theory",
    "coffee", "bicycles", "the human heart", "recycling", "solar panels", "honey bees", "the ocean",
    "black holes", "vaccines", "democracy", "the printing press", "football", "baking bread",
    "the French Revolution", "rainforests", "earthquakes", "DNA", "the stock market", "sleep",
    "Python programming", "prime numbers", "the piano", "mountains", "airplanes", "friendship",
    "time management", "the Olympic Games", "dinosaurs", "the immune system", "renewable energy",
    "Shakespeare", "the Great Wall of China", "rainbows", "trees", "cats", "dogs", "money",
    "the solar system", "robots", "libraries", "tea", "photography", "the Renaissance",
    "bridges", "deserts", "the brain", "meditation", "electric cars", "mathematics", "glaciers",
    "submarines", "the Moon landing", "painting", "languages", "cooking pasta", "birds",
    "the Amazon river", "cloud computing", "nutrition", "public speaking", "the periodic table",
    "hurricanes", "archaeology", "yoga", "the Eiffel Tower", "marathons", "video games", "origami",
)
HELD_OUT_EVERY = 8  # every 8th topic is held out of training


def prompts(split: str, seed: int = 0) -> list[str]:
    """All template x topic prompts of a split ("train" or "heldout"), shuffled."""
    topics = [t for i, t in enumerate(TOPICS) if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == (split == "heldout")]
    items = [template.format(t=topic) for topic in topics for template in TEMPLATES]
    random.Random(seed).shuffle(items)
    return items
