"""Single-image skills: 3D detection, 3D grounding, depth comparison, distance, measurement, scene caption."""

import math
from collections import Counter

import numpy as np

from ..geometry import fov_degrees, project
from ..scene import room_camera, tabletop_camera
from .common import (
    QA,
    Ctx,
    Skill,
    article,
    box_entry,
    boxes_json,
    cam_xyz,
    center_distance,
    choice,
    describe_count,
    fmt,
    fmt_xyz,
    names,
    numeric,
    plural,
    text,
    yes_no,
)

BOX_FORMAT = (
    "3D bounding box format: [x_center, y_center, z_center, x_size, y_size, z_size, pitch, yaw, roll]. "
    "The center is in the camera coordinate system in meters (z_center is the depth); the sizes are the box's "
    "extents along its own X, Y and Z axes; pitch, yaw and roll are rotations about the X, Y and Z axes "
    "(applied in that order), in degrees divided by 180 so that each lies in (-1, 1]."
)
CAMERA_FRAME = (
    "Camera coordinate system: the X axis points right, the Y axis points down and the Z axis points forward; "
    "the origin is the camera."
)
JSON_ANSWER = (
    'Output a JSON list where each entry has the object name in "label" and its 3D bounding box in "bbox_3d".'
)


def camera_line(cam, name: str = "the image") -> str:
    hfov, vfov = fov_degrees(cam.K, cam.width, cam.height)
    return (
        f"Camera of {name}: horizontal field of view hfov={hfov:.2f} degrees, vertical field of view "
        f"vfov={vfov:.2f} degrees, image width={cam.width} and height={cam.height}, no lens distortion."
    )


def one_camera(rng, scene, width, height, n_frames):
    if scene.layout == "tabletop":
        return [tabletop_camera(rng, scene, width, height)]
    return [room_camera(rng, scene, width, height)]


def _refs(c: Ctx, k: int = 0):
    """Visible entities (objects, plus furniture in rooms) that have a unique name."""
    vis = c.visible(k, furniture=c.scene.layout == "room")
    n = names(c.scene, vis)
    return [e for e in vis if e.uid in n], n


# ------------------------------------------------------------------------------------------ 3D detection


def ask_det3d(c: Ctx) -> QA | None:
    room = c.scene.layout == "room"
    vis = c.visible(0, furniture=room)
    if not vis:
        return None
    cam = c.views[0].camera
    style = c.rng.choice(3, p=[0.5, 0.3, 0.2])
    if style == 0:
        targets = vis
        task = c.pick(
            [
                "Detect every object in the image and give its 3D bounding box.",
                "Find all objects in this image and output their 3D bounding boxes.",
                "Locate each object you can see in 3D.",
            ]
            if not room
            else [
                "Detect every object and piece of furniture in the image and give its 3D bounding box.",
                "Find all objects and furniture in this image and output their 3D bounding boxes.",
            ]
        )
    elif style == 1:
        kinds = sorted({e.kind for e in vis})
        kind = c.pick(kinds)
        targets = [e for e in vis if e.kind == kind]
        task = c.pick(
            [
                f"Detect every {kind} in the image (label each with its color and kind).",
                f"Find all the {plural(kind)} in 3D; label each by color and kind.",
            ]
        )
    else:
        labels = sorted({e.label for e in vis})
        chosen = sorted(c.rng.choice(labels, size=min(len(labels), int(c.rng.integers(1, 4))), replace=False))
        targets = [e for e in vis if e.label in chosen]
        task = f"Detect the following objects in 3D: {', '.join(chosen)}."
    pairs = sorted(
        ((box_entry(e.label, e, cam), e.uid) for e in targets),
        key=lambda p: (p[0]["label"], p[0]["bbox_3d"][0]),
    )
    entries = [p[0] for p in pairs]
    question = "\n".join([camera_line(cam), CAMERA_FRAME, BOX_FORMAT, task, JSON_ANSWER])
    return QA(question, boxes_json(entries), "boxes3d", entries, extra={"uids": [p[1] for p in pairs]})


def ask_grounding3d(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    if not refs:
        return None
    e = c.pick(refs)
    cam = c.views[0].camera
    name = n[e.uid]
    task = c.pick(
        [
            f"Give the 3D bounding box of the {name}.",
            f"Where is the {name} in 3D? Output its 3D bounding box.",
            f"Locate the {name} in the camera coordinate system.",
        ]
    )
    entries = [box_entry(name, e, cam)]
    question = "\n".join([camera_line(cam), CAMERA_FRAME, BOX_FORMAT, task, JSON_ANSWER])
    return QA(question, boxes_json(entries), "boxes3d", entries, extra={"uids": [e.uid]})


# ------------------------------------------------------------------------------------------ depth comparison


def depth_separated(za: float, zb: float, ea, eb) -> bool:
    """Depths differ by more than the objects' half extents, so surface depth agrees with centre depth."""
    slack = 0.5 * (max(ea.dims[:2]) + max(eb.dims[:2])) / 2
    return abs(za - zb) >= max(0.06, 0.05 * max(za, zb), slack)


def ask_depth_compare(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    if len(refs) < 2:
        return None
    cam = c.views[0].camera
    z = {e.uid: float(cam_xyz(cam, e)[2]) for e in refs}
    order = [refs[i] for i in c.rng.permutation(len(refs))]
    style = int(c.rng.integers(3))
    if style == 2 and len(refs) >= 3:  # closest / farthest among 3-4
        k = min(len(order), int(c.rng.integers(3, 5)))
        group = order[:k]
        zs = sorted(group, key=lambda e: z[e.uid])
        if not all(depth_separated(z[a.uid], z[b.uid], a, b) for a, b in zip(zs, zs[1:])):
            return None
        far = bool(c.rng.random() < 0.5)
        target = zs[-1] if far else zs[0]
        word = "farthest from" if far else "closest to"
        q = c.pick([f"Which of these objects is {word} the camera?", f"Which object is {word} the viewer?"])
        trace = _depth_trace(cam, group, n, z) + (
            f"\nThe {'largest' if far else 'smallest'} depth is {fmt(z[target.uid])} m, so the {n[target.uid]} is "
            f"{word} the camera."
        )
        return choice(
            c.rng,
            q,
            n[target.uid],
            [n[e.uid] for e in group if e is not target],
            think=trace,
            extra={"uids": [e.uid for e in group], "depths": [round(z[e.uid], 3) for e in group]},
        )
    a, b = order[:2]
    if not depth_separated(z[a.uid], z[b.uid], a, b):
        return None
    closer = a if z[a.uid] < z[b.uid] else b
    trace = _depth_trace(cam, [a, b], n, z) + (
        f"\n{fmt(min(z[a.uid], z[b.uid]))} m < {fmt(max(z[a.uid], z[b.uid]))} m, so the {n[closer.uid]} is closer."
    )
    extra = {"uids": [a.uid, b.uid], "depths": [round(z[a.uid], 3), round(z[b.uid], 3)]}
    if style == 0:
        q = c.pick(
            [
                f"Which is closer to the camera, the {n[a.uid]} or the {n[b.uid]}?",
                f"Which object is nearer to the viewer: the {n[a.uid]} or the {n[b.uid]}?",
            ]
        )
        return choice(c.rng, q, n[closer.uid], [n[(b if closer is a else a).uid]], think=trace, extra=extra)

    def make(want: bool):
        x, y = (closer, a if closer is b else b) if want else (a if closer is b else b, closer)
        return c.pick(
            [
                f"Is the {n[x.uid]} closer to the camera than the {n[y.uid]}?",
                f"Is the {n[x.uid]} nearer to the viewer than the {n[y.uid]}?",
            ]
        ), want

    return yes_no(c.rng, make, think=trace, extra=extra)


def _depth_trace(cam, group, n, z) -> str:
    lines = ["In the camera frame (X right, Y down, Z forward) the object centres are:"]
    lines += [f"- {n[e.uid]}: {fmt_xyz(cam_xyz(cam, e))} m, depth {fmt(z[e.uid])} m" for e in group]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ distances


def ask_distance(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    cam = c.views[0].camera
    if len(refs) >= 2 and c.rng.random() < 0.6:
        a, b = (refs[i] for i in c.rng.choice(len(refs), 2, replace=False))
        d = center_distance(a, b)
        pa, pb = cam_xyz(cam, a), cam_xyz(cam, b)
        diff = pb - pa
        trace = (
            f"Centres in the camera frame: {n[a.uid]} {fmt_xyz(pa)} m, {n[b.uid]} {fmt_xyz(pb)} m.\n"
            f"Difference {fmt_xyz(diff)} m; distance = sqrt({' + '.join(fmt(v * v, 3) for v in diff)}) = {fmt(d)} m."
        )
        q = c.pick(
            [
                f"What is the distance between the {n[a.uid]} and the {n[b.uid]} (center to center)?",
                f"How far apart are the centers of the {n[a.uid]} and the {n[b.uid]}?",
            ]
        )
        return numeric(c.rng, q, d, "m", 2, think=trace, extra={"uids": [a.uid, b.uid]})
    if not refs:
        return None
    e = c.pick(refs)
    p = cam_xyz(cam, e)
    d = float(np.linalg.norm(p))
    trace = (
        f"The {n[e.uid]} is centred at {fmt_xyz(p)} m in the camera frame; its distance from the camera is "
        f"sqrt({' + '.join(fmt(v * v, 3) for v in p)}) = {fmt(d)} m."
    )
    q = c.pick(
        [
            f"How far is the center of the {n[e.uid]} from the camera?",
            f"What is the distance from the camera to the {n[e.uid]}?",
        ]
    )
    return numeric(c.rng, q, d, "m", 2, think=trace, extra={"uids": [e.uid]})


# ------------------------------------------------------------------------------------------ measurement

ROUND = {"ball", "cylinder", "mug", "bowl", "plate"}


def size_question(rng, e, name: str):
    """(question, value in metres, what) for one dimension of an entity."""
    dx, dy, dz = e.dims
    options = [
        ("height", dz, f"How tall is the {name}?"),
        (
            "longest",
            max(e.dims),
            f"What is the length of the longest dimension (length, width or height) of the {name}?",
        ),
    ]
    if e.kind in ROUND:
        diameter = dy if e.kind == "mug" else dx
        options.append(("diameter", diameter, f"What is the diameter of the {name}?"))
    else:
        options.append(("length", max(dx, dy), f"How long is the {name} along its longer horizontal side?"))
        options.append(("width", min(dx, dy), f"How wide is the {name} along its shorter horizontal side?"))
    return options[int(rng.integers(len(options)))]


def ask_measure(c: Ctx) -> QA | None:
    refs, n = _refs(c)
    if not refs:
        return None
    e = c.pick(refs)
    what, value, q = size_question(c.rng, e, n[e.uid])
    cam = c.views[0].camera
    box = box_entry(n[e.uid], e, cam)["bbox_3d"]
    trace = (
        f"The {n[e.uid]} is at depth {fmt(box[2])} m. Its 3D box has extents {fmt(e.dims[0])} x {fmt(e.dims[1])} m "
        f"on the floor plane and {fmt(e.dims[2])} m tall, so its {what} is {fmt(value)} m."
    )
    if e.furniture:
        return numeric(c.rng, q, value, "m", 2, think=trace, extra={"uids": [e.uid], "dimension": what})
    decimals = 0 if c.scene.layout == "room" else 1
    trace += f" That is {value * 100:.{decimals}f} cm."
    return numeric(
        c.rng, q, value * 100, "cm", decimals, think=trace, extra={"uids": [e.uid], "dimension": what}
    )


# ------------------------------------------------------------------------------------------ caption


def left_to_right(cam, entities, min_gap_px: float = 6.0):
    """Entities ordered by the image column of their centre, or None if two are too close to order."""
    u = {e.uid: float(project(cam.K, cam_xyz(cam, e))[0]) for e in entities}
    ordered = sorted(entities, key=lambda e: u[e.uid])
    if any(u[b.uid] - u[a.uid] < min_gap_px for a, b in zip(ordered, ordered[1:])):
        return None
    return ordered


def _listing(labels: list[str]) -> str:
    items = [f"{article(x)} {x}" for x in labels]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption_choice(c: Ctx, question: str, labels: list[str], prefix: str, ordered: bool, **kw) -> QA | None:
    """A caption question whose distractors change one colour or kind, drop or add an object, or (for ordered
    listings) swap two neighbours. Unordered listings are compared as multisets, so no distractor is a
    reordering of the truth."""
    from sim.palette import COLORS, KINDS

    def render(items: list[str]) -> str:
        return prefix + (_listing(items) if ordered else describe_count(Counter(items))) + "."

    def key(items: list[str]):
        return tuple(items) if ordered else tuple(sorted(items))

    truth = key(labels)
    wrong: dict[tuple, str] = {}
    for _ in range(60):
        alt = list(labels)
        i = int(c.rng.integers(len(alt)))
        color, kind = alt[i].rsplit(" ", 1)
        how = int(c.rng.integers(5))
        if how == 0:
            alt[i] = f"{c.pick([x for x in COLORS if x != color])} {kind}"
        elif how == 1:
            alt[i] = f"{color} {c.pick([k for k in KINDS if k != kind])}"
        elif how == 2 and ordered and len(alt) >= 2:
            j = (i + 1) % len(alt)
            alt[i], alt[j] = alt[j], alt[i]
        elif how == 3 and len(alt) >= 3:
            alt.pop(i)
        elif how == 4:
            alt.insert(i, f"{c.pick(list(COLORS))} {c.pick(KINDS)}")
        if key(alt) != truth:
            wrong.setdefault(key(alt), render(alt))
        if len(wrong) == 3:
            break
    if len(wrong) < 3:
        return None
    return choice(c.rng, question, render(labels), sorted(wrong.values()), **kw)


def ask_caption(c: Ctx) -> QA | None:
    cam = c.views[0].camera
    room = c.scene.layout == "room"
    vis = c.visible(0, furniture=room)
    if not vis:
        return None
    ordered = left_to_right(cam, vis)
    if ordered is None:
        return None
    labels = [e.label for e in ordered]
    where = "in a room" if room else "on a wooden table"
    if c.checkable:
        q = c.pick(["Which description matches the image?", "Which caption describes this scene correctly?"])
        return caption_choice(
            c, q, labels, "From left to right: ", True, extra={"uids": [e.uid for e in ordered]}
        )
    z = {e.uid: float(cam_xyz(cam, e)[2]) for e in vis}
    near, far = min(vis, key=lambda e: z[e.uid]), max(vis, key=lambda e: z[e.uid])
    thing = "item" if room else "object"
    parts = [
        f"The image shows {len(vis)} {thing}{'s' if len(vis) > 1 else ''} {where}.",
        f"From left to right: {_listing(labels)}.",
    ]
    if len(vis) > 1:
        parts.append(
            f"The {near.label} is nearest to the camera (about {fmt(z[near.uid], 1)} m away) and the "
            f"{far.label} is farthest (about {fmt(z[far.uid], 1)} m)."
        )
    elev = math.degrees(math.asin(max(-1.0, min(1.0, -cam.cam_to_world[2, 2]))))
    parts.append(f"The camera looks down at about {elev:.0f} degrees.")
    q = c.pick(
        [
            "Describe the scene in the image.",
            "Write a short caption of the spatial layout of this scene.",
            "Describe the objects in the image and where they are.",
        ]
    )
    return text(q, " ".join(parts), extra={"uids": [e.uid for e in ordered]})


_LAYOUTS = (("tabletop", 0.7), ("room", 0.3))
SKILLS = [
    Skill("det3d", "single_image", _LAYOUTS, one_camera, ask_det3d, weight=0.30),
    Skill("grounding3d", "single_image", _LAYOUTS, one_camera, ask_grounding3d, weight=0.14),
    Skill("depth_compare", "single_image", _LAYOUTS, one_camera, ask_depth_compare, cot=True, weight=0.14),
    Skill("distance", "single_image", _LAYOUTS, one_camera, ask_distance, cot=True, weight=0.14),
    Skill("measure", "single_image", _LAYOUTS, one_camera, ask_measure, cot=True, weight=0.14),
    Skill("caption", "single_image", _LAYOUTS, one_camera, ask_caption, weight=0.14),
]
