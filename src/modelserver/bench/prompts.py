"""Text the workloads are made of, and text of an exact length in the simulated engine's tokens.

`AGENT_FEW_SHOT` is a household-task agent prompt in the style of ALFWorld (the shape of the
seed's `BENCHMAK_MESSAGE`: "interact with a household", two solved episodes, then the task),
written here from scratch. Every agent session starts with it, so every session shares a
prefix of about 750 tokens, and each session's conversation grows turn by turn.

`words(n, rng)` gives text of exactly `n` tokens in `modelserver.sim.tokenizer`: words of at
most three letters, each preceded by a space, are one token each (the tokenizer, like Llama
3's, keeps a short word and its leading space whole), so token counts here are sim tokens.
"""

from __future__ import annotations

import random
import string

from modelserver.sim import tokenizer

AGENT_FEW_SHOT = """You are an agent in a simulated home. Each turn, answer with one action.
Actions: go to X, open X, close X, take Y from X, put Y in/on X, use X, think: ...
Here are two solved episodes.

You are standing in a kitchen. Around you are a cupboard 5, a cupboard 4, a cupboard 3, a \
cupboard 2, a cupboard 1, a dishwasher 1, a counter 2, a counter 1, an oven 1, a pantry 1, a \
refrigerator 1, a recyclebin 1, a shelf 2, a shelf 1, a sink 1 and a window sill 1.
Your task is to: place a clean plate on the shelf.
> think: I must find a plate, wash it at the sink, then put it on a shelf.
OK.
> think: Plates are usually in cupboards (1-5), the dishwasher (1), counters (1-2) or the \
sink (1). I will look in the dishwasher first.
OK.
> go to dishwasher 1
The dishwasher 1 is closed.
> open dishwasher 1
You open the dishwasher 1. Inside you see a fork 2 and a glass 1.
> go to cupboard 1
On the cupboard 1 you see a jar 3.
> go to cupboard 2
The cupboard 2 is closed.
> open cupboard 2
You open the cupboard 2. Inside you see a plate 4 and a bowl 1.
> take plate 4 from cupboard 2
You take the plate 4 from the cupboard 2.
> think: I have plate 4. Now I must clean it at the sink.
OK.
> go to sink 1
On the sink 1 you see a sponge 2.
> use sink 1
You wash the plate 4 with the sink 1.
> go to shelf 1
On the shelf 1 you see a vase 1.
> put plate 4 in/on shelf 1
You put the clean plate 4 on the shelf 1.

You are standing in a study. Around you are a bookcase 3, a bookcase 2, a bookcase 1, an \
armchair 1, a desk 1, a drawer 4, a drawer 3, a drawer 2, a drawer 1, a lamp 1, a bin 1, a \
sofa 1 and a side table 1.
Your task is to: look at a letter under the lamp.
> think: I must find a letter, then switch on the lamp 1 and examine it.
OK.
> think: Letters are likely on the desk (1), in drawers (1-4), the side table (1) or the \
bin (1). I will start with the desk.
OK.
> go to desk 1
On the desk 1 you see a pen 3, a stapler 1 and a notebook 2.
> go to drawer 1
The drawer 1 is closed.
> open drawer 1
You open the drawer 1. Inside you see a letter 5 and a key 2.
> take letter 5 from drawer 1
You take the letter 5 from the drawer 1.
> go to lamp 1
The lamp 1 is off.
> use lamp 1
You switch on the lamp 1 and read the letter 5 in its light.

Here is your task.
"""

ROOMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bedroom", ("bed", "desk", "drawer", "dresser", "shelf", "safe", "laundrybasket")),
    ("kitchen", ("cupboard", "counter", "fridge", "sink", "stove", "microwave", "toaster")),
    ("bathroom", ("cabinet", "towelrail", "sink", "bathtub", "toilet", "mirror", "bin")),
    ("living room", ("sofa", "armchair", "tvstand", "coffeetable", "shelf", "drawer", "plant")),
)
OBJECTS = ("mug", "book", "key", "apple", "candle", "remote", "towel", "phone", "cup", "pen")
OBSERVATIONS = (
    "Nothing happens.",
    "OK.",
    "You see nothing of interest there.",
    "It is closed.",
    "You open it. It is empty.",
)

SHORT_QUESTIONS = (
    "What is the capital of {x}?",
    "Give me three tips to learn {x} faster.",
    "Write a haiku about {x}.",
    "Explain {x} to a ten-year-old in two sentences.",
    "List four facts about {x}.",
    "Summarise the history of {x} in one paragraph.",
)
TOPICS = (
    "Norway", "chess", "photosynthesis", "the printing press", "Kenya", "jazz", "volcanoes",
    "Portugal", "tides", "the violin", "glaciers", "Peru", "bees", "the telescope",
)

_LETTERS = string.ascii_lowercase


def words(n_tokens: int, rng: random.Random) -> str:
    """Random text of exactly `n_tokens` sim tokens (random two- or three-letter words)."""
    if n_tokens <= 0:
        return ""
    parts = [
        ("" if i == 0 else " ") + "".join(rng.choices(_LETTERS, k=rng.choice((2, 3))))
        for i in range(n_tokens)
    ]
    return "".join(parts)


def count_tokens(text: str) -> int:
    """Tokens of a plain text in the simulated engine's tokenizer."""
    return len(tokenizer.encode(text))


def task_description(rng: random.Random) -> str:
    """The start of one agent episode: a room, what is in it, and a task."""
    room, furniture = rng.choice(ROOMS)
    seen = [f"a {item} {k}" for item in furniture for k in range(rng.randint(1, 3), 0, -1)]
    obj = rng.choice(OBJECTS)
    target = rng.choice(furniture)
    return (
        f"You are standing in a {room}. Around you are {', '.join(seen)}.\n"
        f"Your task is to: put a {obj} in/on {target}.\n>"
    )


def agent_action(rng: random.Random) -> str:
    """One action an agent might answer with (the scripted assistant side of a session)."""
    _, furniture = rng.choice(ROOMS)
    item = f"{rng.choice(furniture)} {rng.randint(1, 3)}"
    return rng.choice((f"go to {item}", f"open {item}", f"think: I will look in {item} next."))


def observation(rng: random.Random) -> str:
    """What the household answers to an action."""
    _, furniture = rng.choice(ROOMS)
    found = ", ".join(f"a {rng.choice(OBJECTS)} {rng.randint(1, 5)}" for _ in range(3))
    return rng.choice((f"On the {rng.choice(furniture)} you see {found}.", *OBSERVATIONS))


def short_question(rng: random.Random) -> str:
    return rng.choice(SHORT_QUESTIONS).format(x=rng.choice(TOPICS))
