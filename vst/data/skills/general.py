"""General (non-spatial) skills: colour, shape/category, counting a named colour, existence, simple captions.

They train the baseline backbone on the same images and measure that spatial tuning keeps general ability.
"""

from collections import Counter

from sim.palette import COLORS, KINDS

from .common import QA, Ctx, Skill, article, choice, describe_count, numeric, plural, text, yes_no
from .single_image import caption_choice, one_camera


def _visible_all(c: Ctx, pred) -> list | None:
    """Scene objects matching `pred`, or None if any of them is not visible (the answer would be unknowable)."""
    match = [e for e in c.scene.objects if pred(e)]
    vis = {e.uid for e in c.visible(0)}
    return match if all(e.uid in vis for e in match) else None


def ask_color(c: Ctx) -> QA | None:
    kinds = Counter(e.kind for e in c.scene.objects)
    cands = [e for e in c.visible(0) if kinds[e.kind] == 1]
    if not cands:
        return None
    e = c.pick(cands)
    q = c.pick([f"What color is the {e.kind}?", f"What is the color of the {e.kind} in the image?"])
    if c.checkable:
        others = [x for x in COLORS if x != e.color]
        return choice(
            c.rng,
            q,
            e.color,
            [others[i] for i in c.rng.choice(len(others), 3, replace=False)],
            extra={"uids": [e.uid]},
        )
    return text(
        q + " Answer with one word.",
        e.color,
        aliases=[f"it is {e.color}", f"{e.color}."],
        extra={"uids": [e.uid]},
    )


def ask_shape(c: Ctx) -> QA | None:
    colors = Counter(e.color for e in c.scene.objects)
    cands = [e for e in c.visible(0) if colors[e.color] == 1]
    if not cands:
        return None
    e = c.pick(cands)
    q = c.pick([f"What kind of object is the {e.color} one?", f"Which type of object is {e.color}?"])
    if c.checkable:
        others = [k for k in KINDS if k != e.kind]
        return choice(
            c.rng,
            q,
            e.kind,
            [others[i] for i in c.rng.choice(len(others), 3, replace=False)],
            extra={"uids": [e.uid]},
        )
    return text(
        q + " Answer with one word.",
        e.kind,
        aliases=[f"a {e.kind}", f"{article(e.kind)} {e.kind}"],
        extra={"uids": [e.uid]},
    )


def ask_count_color(c: Ctx) -> QA | None:
    present = sorted({e.color for e in c.visible(0)})
    if not present:
        return None
    # Mostly colours that are there, sometimes one that is not (so 0 is a possible answer).
    color = c.pick(present) if c.rng.random() < 0.85 else c.pick([x for x in COLORS if x not in present])
    match = _visible_all(c, lambda e: e.color == color)
    if match is None:
        return None
    where = "on the table" if c.scene.layout == "tabletop" else "in the image"
    q = c.pick([f"How many {color} objects are there {where}?", f"Count the {color} objects {where}."])
    lines = "\n".join(f"- {article(e.label)} {e.label}" for e in match) or "- none"
    trace = f"Looking for {color} objects:\n{lines}\nThat is {len(match)}."
    return numeric(
        c.rng, q, len(match), None, 0, think=trace, extra={"uids": [e.uid for e in match], "color": color}
    )


def ask_count_kind(c: Ctx) -> QA | None:
    present = sorted({e.kind for e in c.visible(0)})
    if not present:
        return None
    kind = c.pick(present)
    match = _visible_all(c, lambda e: e.kind == kind)
    if match is None:
        return None
    q = c.pick([f"How many {plural(kind)} are in the image?", f"How many {plural(kind)} can you see?"])
    lines = "\n".join(f"- {article(e.label)} {e.label}" for e in match)
    trace = f"Finding every {kind}:\n{lines}\nThat is {len(match)}."
    return numeric(
        c.rng, q, len(match), None, 0, think=trace, extra={"uids": [e.uid for e in match], "kind": kind}
    )


def ask_exists(c: Ctx) -> QA | None:
    vis = c.visible(0)
    if not vis:
        return None
    labels = {e.label for e in c.scene.entities}

    def make(want: bool):
        if want:
            label = c.pick(vis).label
            return f"Is there {article(label)} {label} in the image?", True
        # An absent look-alike: the colour of one object with the kind of another, or a new colour.
        for _ in range(30):
            e = c.pick(vis)
            label = (
                f"{c.pick(list(COLORS))} {e.kind}" if c.rng.random() < 0.5 else f"{e.color} {c.pick(KINDS)}"
            )
            if label not in labels:
                return f"Is there {article(label)} {label} in the image?", False
        return None

    return yes_no(c.rng, make)


def ask_general_caption(c: Ctx) -> QA | None:
    vis = c.visible(0)
    if not vis:
        return None
    labels = sorted(e.label for e in vis)
    if c.checkable:
        q = c.pick(["Which caption fits the image?", "Which sentence describes the image?"])
        return caption_choice(c, q, labels, "The image shows ", False, extra={"uids": [e.uid for e in vis]})
    where = "A wooden table with" if c.scene.layout == "tabletop" else "A room with"
    counts = Counter(labels)
    q = c.pick(["Describe the image briefly.", "Write a one-sentence caption for this image."])
    return text(q, f"{where} {describe_count(counts)}.", extra={"uids": [e.uid for e in vis]})


_LAYOUTS = (("tabletop", 0.7), ("room", 0.3))
SKILLS = [
    Skill("general_color", "general", _LAYOUTS, one_camera, ask_color),
    Skill("general_shape", "general", _LAYOUTS, one_camera, ask_shape),
    Skill("general_count_color", "general", _LAYOUTS, one_camera, ask_count_color, cot=True),
    Skill("general_count_kind", "general", _LAYOUTS, one_camera, ask_count_kind, cot=True),
    Skill("general_exists", "general", _LAYOUTS, one_camera, ask_exists),
    Skill("general_caption", "general", _LAYOUTS, one_camera, ask_general_caption),
]
