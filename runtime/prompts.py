"""Prompts for self-distillation, evaluation and benchmarks: instruction templates x topics,
written for this project (nothing is downloaded). Every 8th topic is held out of
training, so held-out prompts share no topic with the training prompts.

The templates come in named sets; each set's prompts are shuffled on their own, so adding a
set never reorders the prompts of another (and the answers generated for them stay valid)."""

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
    "Tell me something surprising about {t}.", "How does {t} affect everyday life?",
    "Write a short poem about {t}.", "What are the main parts of {t}?",
    "Give a step-by-step explanation of {t}.", "What would the world be like without {t}?",
    "Write a news headline and a short article about {t}.", "What are five key terms related to {t}?",
)
# The second set: requests as people type them into a chat (stories, how-to, tips, several
# questions in one), which the first set covers poorly.
REQUEST_TEMPLATES = (
    "Tell me about {t}.", "How does {t} work?", "Explain {t} in simple terms.",
    "Give me three tips for someone interested in {t}.",
    "Write a short story in which a young inventor discovers {t}.",
    "What is {t}, and why is it important? Answer in a few sentences.",
    "I want to learn about {t}. Where should I start?",
    "Write a dialogue between two friends talking about {t}.",
    "Give me a fun fact about {t} and explain it.",
    "What are some common mistakes people make with {t}, and how can they avoid them?",
    "Write a bedtime story for a child about {t}.",
    "Describe {t} to someone who has never heard of it, then give an example.",
)
TEMPLATE_SETS = {"instructions": TEMPLATES, "requests": REQUEST_TEMPLATES}
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
    "tigers", "the Industrial Revolution", "coral reefs", "nuclear energy", "the Pyramids of Giza",
    "smartphones", "the Silk Road", "penguins", "tornadoes", "jazz", "the Cold War", "microscopes",
    "volcanic islands", "the Beatles", "chocolate", "tides", "the Wright brothers", "wind turbines",
    "antibiotics", "the Milky Way", "gardening", "the Vikings", "spiders", "the Sahara desert",
    "compilers", "encryption", "the human eye", "elephants", "the Titanic", "tennis", "lightning",
    "cheese making", "the Mona Lisa", "Mars", "the Great Barrier Reef", "whales", "plate tectonics",
    "ancient Egypt", "the theory of evolution", "social media", "bees and pollination", "fossils",
    "the alphabet", "calendars", "clocks", "maps", "the compass", "telescopes", "bread",
    "the Internet of Things", "databases", "operating systems", "spreadsheets", "3D printing",
    "virtual reality", "the blockchain", "quantum computers", "batteries", "magnets", "sound waves",
    "light", "rivers", "lakes", "islands", "caves", "the Arctic", "Antarctica", "the Himalayas",
    "the Nile", "the Alps", "forests", "wetlands", "soil", "composting", "farming", "rice",
    "wheat", "potatoes", "apples", "bananas", "the tomato", "spices", "vegetarian diets",
    "exercise", "running", "swimming", "basketball", "baseball", "cricket", "golf", "skiing",
    "cycling races", "board games", "poetry", "novels", "theater", "opera", "ballet", "sculpture",
    "architecture", "cathedrals", "castles", "museums", "zoos", "national parks", "trains",
    "ships", "rockets", "the International Space Station", "satellites", "GPS", "radio",
    "television", "newspapers", "the telephone", "email", "passwords", "the human skeleton",
    "muscles", "the lungs", "digestion", "blood", "the skin", "teeth", "dreams", "memory",
    "emotions", "happiness", "habits", "learning a language", "writing an essay", "job interviews",
    "saving money", "taxes", "inflation", "banks", "trade", "cities", "villages", "traffic",
    "pollution", "plastic", "glass", "steel", "wood", "concrete", "water purification", "fire",
    "weather forecasting", "snow", "clouds", "seasons", "the Sun", "comets", "eclipses",
    "the speed of light", "atoms", "chemical reactions", "acids and bases", "fractions",
    "geometry", "statistics", "probability", "algebra", "logic puzzles", "sorting algorithms",
    "the web browser", "open source software", "artificial intelligence", "teamwork",
    "leadership", "kindness", "volunteering", "parenting", "grandparents", "birthdays",
    "holidays", "camping", "hiking", "fishing", "horses", "owls", "frogs", "butterflies",
    "ants", "sharks", "dolphins", "octopuses", "wolves", "bears", "mushrooms", "cacti",
)
HELD_OUT_EVERY = 8  # every 8th topic is held out of training


def prompts(split: str, template_set: str = "instructions", seed: int = 0) -> list[str]:
    """All template x topic prompts of a split ("train" or "heldout") for one template set,
    shuffled."""
    topics = [t for i, t in enumerate(TOPICS) if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == (split == "heldout")]
    items = [template.format(t=topic) for topic in topics for template in TEMPLATE_SETS[template_set]]
    random.Random(seed).shuffle(items)
    return items
