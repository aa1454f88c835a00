"""Video skills on room walkthroughs (VSI-Bench style): object relation (relative distance), counting,
appearance order, scene caption, route plan, room size, object size, absolute distance, relative direction."""

import itertools
from collections import Counter

import numpy as np

from ..scene import room_walkthrough
from .common import (
    QA,
    Ctx,
    Skill,
    center_distance,
    choice,
    describe_count,
    fmt,
    names,
    numeric,
    plural,
    signed_turn_deg,
)
from .single_image import caption_choice


def walkthrough(rng, scene, width, height, n_frames):
    return room_walkthrough(rng, scene, n_frames, width, height)


def _refs(c: Ctx):
    """Entities seen in the video that have a unique name."""
    seen = c.seen_anywhere(furniture=True)
    n = names(c.scene, seen)
    return [e for e in seen if e.uid in n], n


def _xy(e) -> np.ndarray:
    return np.asarray(e.pos[:2])


def _plan_line(e, n) -> str:
    return f"{n[e.uid]} at ({fmt(e.pos[0])}, {fmt(e.pos[1])})"


PLAN = "On a floor plan of the room (metres, origin at the room's centre): "


def ask_count(c: Ctx) -> QA | None:
    seen = {e.uid for e in c.seen_anywhere(furniture=True)}
    by_kind: dict[str, list] = {}
    for e in c.scene.entities:
        by_kind.setdefault(e.kind, []).append(e)
    eligible = [k for k, es in by_kind.items() if all(e.uid in seen for e in es)]
    if not eligible:
        return None
    weights = np.array([len(by_kind[k]) for k in eligible], float)
    kind = eligible[int(c.rng.choice(len(eligible), p=weights / weights.sum()))]
    found = by_kind[kind]
    lines = [f"- {e.label} first seen in frame {c.first_frame(e) + 1}" for e in found]
    trace = f"Going through the frames and keeping track of each {kind}:\n" + "\n".join(lines)
    trace += f"\nThat makes {len(found)} distinct {plural(kind) if len(found) != 1 else kind}."
    q = c.pick(
        [
            f"How many {plural(kind)} are in this room?",
            f"How many {plural(kind)} appear in the video?",
            f"Count the {plural(kind)} in the room.",
        ]
    )
    return numeric(
        c.rng, q, len(found), None, 0, think=trace, extra={"uids": [e.uid for e in found], "kind": kind}
    )


def ask_appearance_order(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    first = {e.uid: c.first_frame(e) for e in refs}
    for _ in range(20):
        k = min(len(refs), int(c.rng.integers(3, 5)))
        if k < 3:
            return None
        group = [refs[i] for i in c.rng.choice(len(refs), k, replace=False)]
        frames = sorted(first[e.uid] for e in group)
        if len(set(frames)) == k:
            break
    else:
        return None
    ordered = sorted(group, key=lambda e: first[e.uid])
    correct = ", ".join(n[e.uid] for e in ordered)
    perms = [p for p in itertools.permutations(ordered) if list(p) != ordered]
    picks = [perms[i] for i in c.rng.choice(len(perms), 3, replace=False)]
    distractors = [", ".join(n[e.uid] for e in p) for p in picks]
    shuffled = [group[i] for i in c.rng.permutation(k)]
    listed = ", ".join(n[e.uid] for e in shuffled)
    q = c.pick(
        [
            f"What will be the first-time appearance order of the following categories in the video: {listed}?",
            f"In which order do these first appear in the video: {listed}?",
        ]
    )
    trace = "First frame in which each appears:\n" + "\n".join(
        f"- {n[e.uid]}: frame {first[e.uid] + 1}" for e in ordered
    )
    trace += f"\nSo the order is: {correct}."
    return choice(
        c.rng,
        q,
        correct,
        distractors,
        think=trace,
        extra={"uids": [e.uid for e in ordered], "first_frames": [first[e.uid] for e in ordered]},
    )


def ask_rel_distance(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    if len(refs) < 4:
        return None
    target = c.pick(refs)
    others = [e for e in refs if e.uid != target.uid]
    k = min(len(others), 4)
    cands = [others[i] for i in c.rng.choice(len(others), k, replace=False)]
    d = {e.uid: center_distance(e, target) for e in cands}
    far = bool(c.rng.random() < 0.3)
    ranked = sorted(cands, key=lambda e: d[e.uid], reverse=far)
    gap = abs(d[ranked[1].uid] - d[ranked[0].uid])
    if gap < max(0.3, 0.1 * d[ranked[0].uid]):
        return None
    word = "farthest from" if far else "closest to"
    listed = ", ".join(n[e.uid] for e in cands)
    q = f"Measuring from the center of each object, which of these objects ({listed}) is {word} the {n[target.uid]}?"
    trace = (
        PLAN
        + _plan_line(target, n)
        + ".\n"
        + "\n".join(f"- {n[e.uid]}: distance {fmt(d[e.uid])} m" for e in cands)
        + f"\nSo the {n[ranked[0].uid]} is {word} the {n[target.uid]}."
    )
    return choice(
        c.rng,
        q,
        n[ranked[0].uid],
        [n[e.uid] for e in ranked[1:]],
        think=trace,
        extra={"uids": [target.uid] + [e.uid for e in cands]},
    )


def _turn_word(t: float) -> str | None:
    if 35 <= t <= 145:
        return "turn left"
    if -145 <= t <= -35:
        return "turn right"
    if abs(t) >= 160:
        return "turn back"
    return None


def ask_route(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    if len(refs) < 4:
        return None
    for _ in range(40):
        a, b, cc, d = (refs[i] for i in c.rng.choice(len(refs), 4, replace=False))
        legs = [_xy(b) - _xy(a), _xy(cc) - _xy(b), _xy(d) - _xy(cc)]
        if min(np.linalg.norm(v) for v in legs) < 1.0:
            continue
        t1, t2 = signed_turn_deg(legs[0], legs[1]), signed_turn_deg(legs[1], legs[2])
        w1, w2 = _turn_word(t1), _turn_word(t2)
        if w1 and w2:
            break
    else:
        return None
    correct = f"{w1.capitalize()}, {w2}"
    words = ("turn left", "turn right", "turn back")
    combos = [f"{x.capitalize()}, {y}" for x in words for y in words if f"{x.capitalize()}, {y}" != correct]
    distractors = [combos[i] for i in c.rng.choice(len(combos), 3, replace=False)]
    q = (
        f"You are a robot beginning at the {n[a.uid]} and facing the {n[b.uid]}. You want to navigate to the "
        f"{n[d.uid]}. You will perform the following actions (for each [please fill in], choose turn left, turn right "
        f"or turn back): 1. Go forward until the {n[b.uid]}. 2. [please fill in] 3. Go forward until the "
        f"{n[cc.uid]}. 4. [please fill in] 5. Go forward until the {n[d.uid]}. You have reached the final "
        "destination."
    )
    trace = (
        PLAN + ", ".join(_plan_line(e, n) for e in (a, b, cc, d)) + ".\n"
        f"Heading from the {n[a.uid]} to the {n[b.uid]}, the next leg turns {t1:.0f} degrees (counter-clockwise is "
        f"left): {w1}. At the {n[cc.uid]} the path turns {t2:.0f} degrees: {w2}."
    )
    return choice(
        c.rng,
        q,
        correct,
        distractors,
        think=trace,
        extra={"uids": [a.uid, b.uid, cc.uid, d.uid], "turns_deg": [round(t1, 1), round(t2, 1)]},
    )


def ask_room_size(c: Ctx) -> QA | None:
    rx, ry, _ = c.scene.room
    area = rx * ry
    q = c.pick(
        [
            "What is the size of this room (in square meters)?",
            "Estimate the floor area of the room shown in the video, in square meters.",
        ]
    )
    trace = f"The room measures about {fmt(rx)} m by {fmt(ry)} m, so its floor area is {fmt(area, 1)} square meters."
    return numeric(c.rng, q, area, "m2", 1, think=trace, extra={"room": [round(rx, 3), round(ry, 3)]})


def ask_object_size(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    if not refs:
        return None
    e = c.pick(refs)
    longest = max(e.dims) * 100
    q = (
        f"What is the length of the longest dimension (length, width, or height) of the {n[e.uid]}, measured in "
        "centimeters?"
    )
    trace = (
        f"The {n[e.uid]} measures {fmt(e.dims[0] * 100, 0)} x {fmt(e.dims[1] * 100, 0)} cm on the floor and "
        f"{fmt(e.dims[2] * 100, 0)} cm high; the longest is {fmt(longest, 0)} cm."
    )
    return numeric(c.rng, q, longest, "cm", 0, think=trace, extra={"uids": [e.uid]})


def ask_abs_distance(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    if len(refs) < 2:
        return None
    a, b = (refs[i] for i in c.rng.choice(len(refs), 2, replace=False))
    d = center_distance(a, b)
    diff = np.asarray(b.pos) - np.asarray(a.pos)
    q = c.pick(
        [
            f"What is the distance between the centers of the {n[a.uid]} and the {n[b.uid]}?",
            f"How far is the {n[a.uid]} from the {n[b.uid]} (center to center)?",
        ]
    )
    trace = (
        f"In room coordinates (metres, z up) the {n[a.uid]} is at ({', '.join(fmt(v) for v in a.pos)}) and the "
        f"{n[b.uid]} at ({', '.join(fmt(v) for v in b.pos)}). The difference is "
        f"({', '.join(fmt(v) for v in diff)}), so the distance is {fmt(d)} m."
    )
    return numeric(c.rng, q, d, "m", 2, think=trace, extra={"uids": [a.uid, b.uid]})


def _direction(bearing: float, level: str) -> str | None:
    """Where something lies for a person facing along bearing 0 (counter-clockwise positive = left)."""
    b = bearing
    if level == "easy":
        return "left" if 20 <= b <= 160 else ("right" if -160 <= b <= -20 else None)
    if level == "medium":
        if abs(b) >= 140:
            return "back"
        return "left" if 30 <= b <= 120 else ("right" if -120 <= b <= -30 else None)
    for name, lo, hi in (
        ("front-left", 15, 75),
        ("back-left", 105, 165),
        ("front-right", -75, -15),
        ("back-right", -165, -105),
    ):
        if lo <= b <= hi:
            return name
    return None


def ask_rel_direction(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    if len(refs) < 3:
        return None
    level = ("easy", "medium", "hard")[int(c.rng.integers(3))]
    options = {
        "easy": ["left", "right"],
        "medium": ["left", "right", "back"],
        "hard": ["front-left", "front-right", "back-left", "back-right"],
    }[level]
    for _ in range(30):
        a, b, q3 = (refs[i] for i in c.rng.choice(len(refs), 3, replace=False))
        if min(np.linalg.norm(_xy(b) - _xy(a)), np.linalg.norm(_xy(q3) - _xy(a))) < 0.8:
            continue
        bearing = signed_turn_deg(_xy(b) - _xy(a), _xy(q3) - _xy(a))
        where = _direction(bearing, level)
        if where:
            break
    else:
        return None
    q = (
        f"If I am standing by the {n[a.uid]} and facing the {n[b.uid]}, is the {n[q3.uid]} to my "
        f"{', '.join(options[:-1])} or {options[-1]}?"
    )
    trace = (
        PLAN + ", ".join(_plan_line(e, n) for e in (a, b, q3)) + ".\n"
        f"Facing the {n[b.uid]}, the {n[q3.uid]} lies {bearing:.0f} degrees counter-clockwise from straight "
        f"ahead (positive is left), which is {where}."
    )
    return choice(
        c.rng,
        q,
        where,
        [o for o in options if o != where],
        think=trace,
        extra={"uids": [a.uid, b.uid, q3.uid], "bearing_deg": round(bearing, 1), "level": level},
    )


def ask_video_caption(c: Ctx) -> QA | None:
    seen = c.seen_anywhere(furniture=True)
    if len(seen) < 2:
        return None
    labels = sorted(e.label for e in seen)
    if c.checkable:
        q = c.pick(
            [
                "Which list contains exactly the things seen in this video?",
                "Which description matches the room in the video?",
            ]
        )
        return caption_choice(c, q, labels, "The video shows ", False, extra={"uids": [e.uid for e in seen]})
    rx, ry, _ = c.scene.room
    furn = Counter(e.label for e in seen if e.furniture)
    objs = Counter(e.label for e in seen if not e.furniture)
    parts = [f"The video walks through a room of about {fmt(rx, 1)} by {fmt(ry, 1)} meters."]
    if furn:
        parts.append(f"The furniture includes {describe_count(furn)}.")
    if objs:
        parts.append(f"There {'is' if sum(objs.values()) == 1 else 'are'} also {describe_count(objs)}.")
    q = c.pick(["Describe the room shown in the video.", "Give a short description of this video."])
    return QA(q, " ".join(parts), "text", " ".join(parts), aliases=[], extra={"uids": [e.uid for e in seen]})


_ROOM = (("room", 1.0),)
SKILLS = [
    Skill("video_relation", "video", _ROOM, walkthrough, ask_rel_distance, cot=True),
    Skill("video_count", "video", _ROOM, walkthrough, ask_count, cot=True),
    Skill("video_appearance_order", "video", _ROOM, walkthrough, ask_appearance_order, cot=True),
    Skill("video_caption", "video", _ROOM, walkthrough, ask_video_caption),
    Skill("video_route", "video", _ROOM, walkthrough, ask_route, cot=True),
    Skill("video_room_size", "video", _ROOM, walkthrough, ask_room_size),
    Skill("video_object_size", "video", _ROOM, walkthrough, ask_object_size),
    Skill("video_abs_distance", "video", _ROOM, walkthrough, ask_abs_distance, cot=True),
    Skill("video_rel_direction", "video", _ROOM, walkthrough, ask_rel_direction, cot=True),
]
