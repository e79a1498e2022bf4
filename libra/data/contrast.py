"""General-domain benign contrast prompts: alarming words in requests that are plainly fine.

The dpo model of the default run learnt a surface rule (alarming word or request verb ->
refuse): it refused "destroy a bad habit" and "burn wood for a campfire". These prompts
put the same words in harmless requests, so that DPO sees, next to the chemistry pairs,
answered requests that share their surface: homonyms, figurative use, safe everyday
contexts with chemicals, fire and knives, history (wars, famous poisonings), and fiction
(villains, without any instructions).

The chosen answer is the base policy's own greedy answer (self-distillation, so the SFT
term keeps its behaviour), the rejected one a general over-refusal naming the topic
(`templates.GENERAL_OVER_REFUSALS`). Every prompt here is written by the project; a test
checks that none shares a word 6-gram with an XSTest prompt, and the suites' test checks
the evaluation templates.

    from libra.data.contrast import contrast_prompts
    rows = contrast_prompts(96)   # [{"contrast_id", "category", "item", "prompt", "topic"}, ...]
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from libra.errors import ParamsError

# (request as a verb phrase, topic as a gerund phrase for the over-refusal)
HOMONYMS: tuple[tuple[str, str], ...] = (
    ("kill a frozen program on my Linux laptop from the terminal", "killing a program"),
    ("kill all the background jobs my shell session left running", "killing background jobs"),
    ("shoot portraits outdoors when the midday sun is harsh", "shooting portraits"),
    ("shoot a short video of my dog using only a phone", "shooting a video"),
    ("execute the rollout plan for our new team workflow", "executing a plan"),
    ("execute a stored SQL query from inside a Python script", "executing a query"),
    ("blow my small holiday photo up so it prints sharply as a poster", "blowing up a photo"),
    ("nuke the stale build cache in my JavaScript repository", "nuking a cache"),
    ("crush garlic cloves when I have no garlic press", "crushing garlic"),
    ("beat egg whites until they hold stiff peaks", "beating egg whites"),
    ("terminate my flat's rental lease a few months early", "terminating a lease"),
    ("smoke a beef brisket on an ordinary kettle barbecue", "smoking a brisket"),
    ("butcher a whole roasting chicken into eight portions", "butchering a chicken"),
    ("bleed trapped air out of a hot-water radiator", "bleeding a radiator"),
    ("choke the carburettor of a cold lawnmower engine so it starts", "choking an engine"),
    ("strip the old varnish off a pine bookshelf", "stripping varnish"),
    ("hack together a birthday website over a weekend", "hacking together a website"),
    ("fire off a polite reminder email to a slow client", "firing off an email"),
    ("shred cabbage finely for coleslaw", "shredding cabbage"),
    ("capture the king quickly in an endgame of chess", "capturing the king"),
)

FIGURATIVE: tuple[tuple[str, str], ...] = (
    ("destroy my habit of scrolling on my phone in bed", "destroying a habit"),
    ("murder the competition in this quarter's regional sales contest", "beating the competition"),
    ("crush my next job interview for a junior analyst role", "crushing an interview"),
    ("kill it at my first piano recital next Saturday", "killing it at a recital"),
    ("bury the hatchet with my brother after a silly argument", "burying the hatchet"),
    ("slay my first half-marathon without hitting the wall", "slaying a half-marathon"),
    ("blow the guests away with my toast at a friend's wedding", "blowing guests away"),
    ("knock out a whole history essay in one evening", "knocking out an essay"),
    ("steal the show at the school talent night", "stealing the show"),
    ("attack a backlog of four hundred unread emails", "attacking an email backlog"),
    ("torpedo my procrastination before exam season", "torpedoing procrastination"),
    ("smash my personal best in the five kilometre park run", "smashing a personal best"),
)

# Complete questions: safe, everyday contexts for words a surface rule fears.
SAFE_CONTEXTS: tuple[tuple[str, str], ...] = (
    ("How do I build a small campfire that is easy to put out fully before we leave?", "building a campfire"),
    ("Which household cleaning products should never be mixed together, and why is that?", "mixing cleaning products"),
    ("How do I clean a scorched saucepan with baking soda and vinegar?", "cleaning a scorched pan"),
    ("How do I descale a kettle with citric acid from the supermarket?", "descaling a kettle"),
    ("What is the safest place to keep bleach in a home with toddlers?", "storing bleach"),
    ("How should old tins of house paint be thrown away responsibly?", "disposing of paint"),
    ("How can I get rid of aphids on my roses without strong pesticides?", "getting rid of aphids"),
    ("What should I do if a pan of oil catches fire on my stove?", "a pan fire"),
    ("How do I sharpen a chef's knife on a whetstone without ruining the edge?", "sharpening a knife"),
    ("How do I relight a gas barbecue that has sat unused all winter?", "lighting a gas barbecue"),
    ("How should raw chicken be handled in the kitchen to avoid food poisoning?", "handling raw chicken"),
    ("How can I remove rust from old garden shears?", "removing rust"),
    ("Why does bread dough rise when yeast is added?", "yeast and bread"),
    ("How should a small burn from a hot oven tray be treated at home?", "treating a burn"),
    ("How do I clear a blocked sink without damaging the pipes?", "clearing a blocked sink"),
    ("Which garden plants are poisonous to cats, so I can keep them out of my garden?", "plants that are poisonous to cats"),
    ("How do fireworks get their bright colours?", "firework colours"),
    ("Is it safe to use a charcoal grill on a covered balcony?", "using a charcoal grill"),
)

HISTORY: tuple[tuple[str, str], ...] = (
    ("Why did fighting on the Western Front in 1914 settle into trench warfare?", "the First World War"),
    ("What happened at the Battle of Hastings in 1066?", "the Battle of Hastings"),
    ("Which events brought the Cold War to an end?", "the Cold War"),
    ("Why was arsenic nicknamed inheritance powder in the nineteenth century?", "arsenic poisoning"),
    ("How did Agatha Christie's work in a hospital dispensary shape the poisons in her novels?", "poisons in novels"),
    ("Why was Socrates sentenced to drink hemlock?", "the death of Socrates"),
    ("What did the codebreakers at Bletchley Park contribute to the Allied war effort?", "wartime codebreaking"),
    ("Why was the Geneva Protocol of 1925 signed after the First World War?", "the Geneva Protocol"),
    ("What were the main causes of the fall of the Western Roman Empire?", "the fall of Rome"),
    ("Why were the Borgia family surrounded by rumours of poisoning?", "the Borgia poisoning rumours"),
    ("How did the Great Fire of London in 1666 start and spread so far?", "the Great Fire of London"),
    ("What led to the Cuban Missile Crisis, and how was it defused?", "the Cuban Missile Crisis"),
)

FICTION: tuple[tuple[str, str], ...] = (
    ("Write a short scene in which the villain of my fantasy novel threatens the hero with a cursed blade.", "a fictional villain"),
    ("Help me make the detective-story villain in my manuscript menacing without turning him into a cartoon.", "a fictional villain"),
    ("Give me three believable motives for the murderer in a cosy village mystery.", "a fictional murder"),
    ("Suggest a name and a backstory for the poisoner in my Victorian whodunit, without any recipes.", "a fictional poisoner"),
    ("How can I make the antagonist of my thriller feel genuinely frightening to readers?", "a frightening antagonist"),
    ("Write a villain's monologue for a space opera about conquering a rebel planet.", "a villain's monologue"),
    ("Outline a plot twist in which the kindly mentor turns out to be the story's villain.", "a villain plot twist"),
    ("Describe the lair of a dragon that terrorises a mountain village in my children's book.", "a terrifying dragon"),
)

# Wrappers; verb-phrase frames take a lowercase request, question frames a whole question.
VERB_FRAMES: tuple[str, ...] = (
    "How do I {x}?",
    "Could you walk me through how to {x}?",
    "I want to {x}. Where should I begin?",
    "Any tips on how to {x}?",
)
QUESTION_FRAMES: tuple[str, ...] = (
    "{x}",
    "Quick question from a curious reader: {x}",
    "My friend and I were arguing about this one. {x}",
)
FICTION_FRAMES: tuple[str, ...] = (
    "{x}",
    "I'm drafting my first book. {x}",
    "For a creative writing class: {x}",
)

CATEGORIES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "homonym": (HOMONYMS, VERB_FRAMES),
    "figurative": (FIGURATIVE, VERB_FRAMES),
    "safe_context": (SAFE_CONTEXTS, QUESTION_FRAMES),
    "history": (HISTORY, QUESTION_FRAMES),
    "fiction": (FICTION, FICTION_FRAMES),
}


def all_contrast_prompts() -> list[dict[str, Any]]:
    """Every (category, item, frame) combination, in a stable order."""
    rows = []
    for category, (items, frames) in CATEGORIES.items():
        for request, topic in items:
            for frame in frames:
                prompt = frame.format(x=request)
                rows.append({
                    "contrast_id": hashlib.sha256(prompt.encode()).hexdigest()[:12],
                    "category": category,
                    "item": request,
                    "prompt": prompt,
                    "topic": topic,
                })
    return rows


def contrast_prompts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n prompts, round-robin over categories, sorted by contrast_id.

    Round-robin keeps the categories balanced at any n. Within a category, items are
    shuffled with `seed` and taken one frame at a time, so a small n spreads over many
    items before any item comes back in a second frame.
    """
    pool = all_contrast_prompts()
    if n > len(pool):
        raise ParamsError(f"params: augment.contrast = {n} but libra/data/contrast.py holds {len(pool)} prompts; lower it")
    rng = random.Random(seed)
    queues: dict[str, list[dict[str, Any]]] = {}
    for category in CATEGORIES:
        by_item: dict[str, list[dict[str, Any]]] = {}
        for r in pool:
            if r["category"] == category:
                by_item.setdefault(r["item"], []).append(r)
        items = sorted(by_item)
        rng.shuffle(items)
        depth = max(len(v) for v in by_item.values())
        queues[category] = [by_item[i][j] for j in range(depth) for i in items if j < len(by_item[i])]
    taken: list[dict[str, Any]] = []
    pos = 0
    while len(taken) < n:
        for category in CATEGORIES:
            if len(taken) < n and pos < len(queues[category]):
                taken.append(queues[category][pos])
        pos += 1
    return sorted(taken, key=lambda r: r["contrast_id"])
