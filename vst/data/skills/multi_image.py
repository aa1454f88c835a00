"""Multi-image skills: 3D detection across views, cross-view correspondence, object-object relation,
camera motion, camera-camera relation, multi-view scene caption. Every answer follows from the extrinsics."""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..geometry import project, to_camera
from ..scene import Camera, room_camera, tabletop_camera
from .common import (
    CHOICE_INSTRUCTIONS,
    LETTERS,
    QA,
    Ctx,
    Skill,
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
    text,
)
from .single_image import BOX_FORMAT, CAMERA_FRAME, JSON_ANSWER, camera_line, caption_choice

MOTIONS = ("moved forward", "moved backward", "moved left", "moved right", "turned left", "turned right")
ORDINAL = ("first", "second", "third", "fourth")


def _camera(rng, scene, width, height):
    if scene.layout == "tabletop":
        return tabletop_camera(rng, scene, width, height)
    return room_camera(rng, scene, width, height)


def two_or_three(rng, scene, width, height, n_frames):
    return [_camera(rng, scene, width, height) for _ in range(int(rng.integers(2, 4)))]


def two(rng, scene, width, height, n_frames):
    return [_camera(rng, scene, width, height) for _ in range(2)]


def _floor_axes(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A camera's forward and right directions projected onto the floor plane (unit vectors)."""
    fwd, right = T[:3, 2].copy(), T[:3, 0].copy()
    fwd[2] = right[2] = 0.0
    return fwd / np.linalg.norm(fwd), right / np.linalg.norm(right)


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def motion_pair(rng, scene, width, height, n_frames):
    """A camera and the same camera after one dominant motion (drawn uniformly over MOTIONS)."""
    first = _camera(rng, scene, width, height)
    T = first.cam_to_world.copy()
    fwd, right = _floor_axes(T)
    scale = 1.0 if scene.layout == "tabletop" else 3.0
    motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    eye, R = T[:3, 3].copy(), T[:3, :3].copy()
    if motion.startswith("moved"):
        d = float(rng.uniform(0.12, 0.3)) * scale
        main = {"forward": fwd, "backward": -fwd, "left": -right, "right": right}[motion.split()[1]]
        side = right if abs(main @ fwd) > 0.5 else fwd
        eye = eye + d * main + float(rng.uniform(-0.12, 0.12)) * d * side
        R = _rot_z(float(rng.uniform(-2.0, 2.0))) @ R
    else:
        angle = float(rng.uniform(15.0, 35.0)) * (1 if motion == "turned left" else -1)
        R = _rot_z(angle) @ R
        eye = eye + float(rng.uniform(-0.015, 0.015)) * scale * fwd
    T2 = np.eye(4)
    T2[:3, :3], T2[:3, 3] = R, eye
    return [first, Camera(T2, first.fovy, width, height)]


def relative_motion(c1: Camera, c2: Camera) -> dict:
    """Camera 2 relative to camera 1: floor-plane displacement (right, forward), height change and turn."""
    fwd1, right1 = _floor_axes(c1.cam_to_world)
    fwd2, _ = _floor_axes(c2.cam_to_world)
    d = c2.position - c1.position
    turn = math.degrees(
        math.atan2(fwd1[0] * fwd2[1] - fwd1[1] * fwd2[0], fwd1 @ fwd2)
    )  # + = counter-clockwise
    return {
        "right": float(d @ right1),
        "forward": float(d @ fwd1),
        "up": float(d[2]),
        "turn_left_deg": turn,
        "distance": float(np.linalg.norm(d)),
    }


def classify_motion(m: dict, scale: float) -> str | None:
    """The one dominant motion, or None when the motion is mixed or too small to name."""
    horiz = math.hypot(m["right"], m["forward"])
    if abs(m["turn_left_deg"]) >= 10 and horiz <= 0.05 * scale:
        return "turned left" if m["turn_left_deg"] > 0 else "turned right"
    if abs(m["turn_left_deg"]) <= 4 and horiz >= 0.08 * scale:
        if abs(m["forward"]) >= 2.5 * abs(m["right"]):
            return "moved forward" if m["forward"] > 0 else "moved backward"
        if abs(m["right"]) >= 2.5 * abs(m["forward"]):
            return "moved right" if m["right"] > 0 else "moved left"
    return None


def _shared(c: Ctx, a: int = 0, b: int = 1):
    seen_b = {e.uid for e in c.visible(b)}
    return [e for e in c.visible(a) if e.uid in seen_b]


def _evidence(c: Ctx, shared, n) -> str:
    """How a shared object's camera coordinates change between the two views."""
    e = shared[0]
    name = n.get(e.uid, e.label)
    p1, p2 = cam_xyz(c.views[0].camera, e), cam_xyz(c.views[1].camera, e)
    return f"The {name} is at {fmt_xyz(p1)} m in the first camera's frame and at {fmt_xyz(p2)} m in the second's."


def ask_camera_motion(c: Ctx) -> QA | None:
    shared = _shared(c)
    if not shared:
        return None
    c1, c2 = (v.camera for v in c.views)
    m = relative_motion(c1, c2)
    scale = 1.0 if c.scene.layout == "tabletop" else 3.0
    label = classify_motion(m, scale)
    if label is None:
        return None
    n = names(c.scene)
    trace = (
        _evidence(c, shared, n)
        + f"\nSo the second camera sits {fmt(m['right'])} m to the right, {fmt(m['forward'])} m forward and "
        f"{fmt(m['up'])} m up from the first, and its view direction turned {m['turn_left_deg']:.0f} degrees "
        f"counter-clockwise (to the left).\nThe dominant change is that the camera {label}."
    )
    extra = {"motion": {k: round(v, 4) for k, v in m.items()}, "motion_label": label}
    if c.rng.random() < 0.7:
        q = c.pick(
            [
                "How did the camera move from the first image to the second image?",
                "Between taking the first and the second image, what did the camera do?",
                "Which camera motion turns the first view into the second view?",
            ]
        )
        others = [x for x in MOTIONS if x != label]
        distractors = [others[i] for i in c.rng.choice(len(others), 3, replace=False)]
        return choice(
            c.rng,
            q,
            f"The camera {label}.",
            [f"The camera {x}." for x in distractors],
            think=trace,
            extra=extra,
        )
    if label.startswith("turned"):
        q = c.pick(
            [
                "By how many degrees did the camera turn between the two images?",
                "How large is the camera's rotation from the first image to the second, in degrees?",
            ]
        )
        return numeric(
            c.rng, q, abs(m["turn_left_deg"]), None, 0, think=trace, extra={**extra, "unit_text": "degrees"}
        )
    q = c.pick(
        [
            "How far did the camera move between the two images?",
            "What distance did the camera travel from the first image to the second?",
        ]
    )
    return numeric(c.rng, q, m["distance"], "m", 2, think=trace, extra=extra)


def ask_camera_camera(c: Ctx) -> QA | None:
    shared = _shared(c)
    if not shared:
        return None
    c1, c2 = (v.camera for v in c.views)
    m = relative_motion(c1, c2)
    n = names(c.scene)
    bearing = math.degrees(math.atan2(m["right"], m["forward"]))  # 0 = straight ahead, 90 = to the right
    facing = abs(m["turn_left_deg"])
    trace = (
        _evidence(c, shared, n)
        + f"\nThe second camera is {fmt(m['right'])} m to the right and {fmt(m['forward'])} m in front of the "
        f"first (bearing {bearing:.0f} degrees from straight ahead, distance {fmt(m['distance'])} m); its view "
        f"direction differs by {facing:.0f} degrees."
    )
    extra = {"motion": {k: round(v, 4) for k, v in m.items()}}
    style = int(c.rng.integers(3))
    if style == 0:
        where = None
        if abs(bearing) < 30:
            where = "in front of"
        elif abs(bearing) > 150:
            where = "behind"
        elif 60 < bearing < 120:
            where = "to the right of"
        elif -120 < bearing < -60:
            where = "to the left of"
        if where is None:
            return None
        opts = ["in front of", "behind", "to the left of", "to the right of"]
        q = c.pick(
            [
                "Where is the camera of the second image relative to the camera of the first image?",
                "Seen from the first camera, where was the second image taken?",
            ]
        )
        return choice(
            c.rng,
            q,
            f"{where} the first camera",
            [f"{o} the first camera" for o in opts if o != where],
            think=trace + f"\nA bearing of {bearing:.0f} degrees means {where} the first camera.",
            extra=extra,
        )
    if style == 1:
        q = c.pick(
            [
                "What is the angle between the viewing directions of the two cameras, in degrees?",
                "By how many degrees do the two cameras' viewing directions differ?",
            ]
        )
        return numeric(c.rng, q, facing, None, 0, think=trace, extra={**extra, "unit_text": "degrees"})
    q = c.pick(
        ["How far apart were the two cameras?", "What is the distance between the two camera positions?"]
    )
    return numeric(c.rng, q, m["distance"], "m", 2, think=trace, extra=extra)


def ask_mv_det3d(c: Ctx) -> QA | None:
    room = c.scene.layout == "room"
    seen = c.seen_anywhere(furniture=room)
    if not seen:
        return None
    cam = c.views[0].camera
    pairs = sorted(
        ((box_entry(e.label, e, cam), e.uid) for e in seen), key=lambda p: (p[0]["label"], p[0]["bbox_3d"][0])
    )
    entries = [p[0] for p in pairs]
    lines = [camera_line(v.camera, f"image {k + 1}") for k, v in enumerate(c.views)]
    task = c.pick(
        [
            "Detect every object that appears in any of the images and give its 3D bounding box in the camera "
            "coordinate system of image 1.",
            "The images show one scene from different viewpoints. Find all objects and output their 3D boxes in "
            "image 1's camera coordinates.",
        ]
    )
    question = "\n".join(
        [*lines, CAMERA_FRAME + " Use the camera of image 1.", BOX_FORMAT, task, JSON_ANSWER]
    )
    return QA(question, boxes_json(entries), "boxes3d", entries, extra={"uids": [p[1] for p in pairs]})


# ------------------------------------------------------------------------------------------ correspondence


def _font(size: int):
    return ImageFont.load_default(size=size)


def draw_marks(rgb: np.ndarray, marks: list[tuple[str, float, float]], color=(255, 0, 255)) -> np.ndarray:
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    font = _font(max(9, rgb.shape[0] // 14))
    r = max(3, rgb.shape[0] // 40)
    for label, u, v in marks:
        draw.ellipse((u - r, v - r, u + r, v + r), outline=(0, 0, 0), width=3)
        draw.ellipse((u - r, v - r, u + r, v + r), outline=color, width=1)
        draw.text((u + r + 1, v - 2 * r), label, fill=color, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(img)


def _interior_pixels(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbours at distance 2 share the mask (away from silhouettes)."""
    m = mask.copy()
    for dv, du in ((2, 0), (-2, 0), (0, 2), (0, -2)):
        m &= np.roll(mask, (dv, du), axis=(0, 1))
    return np.argwhere(m)


def ask_correspondence(c: Ctx) -> QA | None:
    v1, v2 = c.views[:2]
    shared = [e for e in _shared(c) if v1.pixels[e.uid] >= 60 and v2.pixels[e.uid] >= 60]
    if not shared:
        return None
    e = c.pick(shared)
    px = _interior_pixels(v1.seg == e.uid)
    if len(px) == 0:
        return None
    r, col = px[int(c.rng.integers(len(px)))]
    z = float(v1.depth[r, col])
    K1 = v1.camera.K
    p_cam = np.array([(col + 0.5 - K1[0, 2]) / K1[0, 0] * z, (r + 0.5 - K1[1, 2]) / K1[1, 1] * z, z])
    world = v1.camera.cam_to_world[:3, :3] @ p_cam + v1.camera.cam_to_world[:3, 3]
    q2 = to_camera(v2.camera.cam_to_world, world)
    if q2[2] <= 0.05:
        return None
    u2, w2 = project(v2.camera.K, q2)
    H2, W2 = v2.seg.shape
    margin = 6
    if not (margin <= u2 < W2 - margin and margin <= w2 < H2 - margin):
        return None
    ri, ci = int(w2), int(u2)
    if v2.seg[ri, ci] != e.uid or abs(float(v2.depth[ri, ci]) - q2[2]) > 0.02 * max(1.0, q2[2]):
        return None  # the point is hidden in the second view
    # Distractors: points on other entities (or elsewhere on the same one), well apart from each other.
    points = [(u2, w2)]
    on_background = c.rng.random() < 0.3  # sometimes distractors may also sit on the floor or walls
    pool = np.argwhere(np.ones_like(v2.seg, bool) if on_background else v2.seg >= 0)
    for _ in range(200):
        if len(points) == 4:
            break
        rr, cc = pool[int(c.rng.integers(len(pool)))]
        cand = (cc + 0.5, rr + 0.5)
        if not (margin <= cand[0] < W2 - margin and margin <= cand[1] < H2 - margin):
            continue
        if all(math.hypot(cand[0] - a, cand[1] - b) >= max(14, W2 / 12) for a, b in points):
            points.append(cand)
    if len(points) < 4:
        return None
    order = c.rng.permutation(4)  # point i gets letter order[i]
    letter = LETTERS[int(order[0])]
    marks = [(LETTERS[int(order[i])], u, v) for i, (u, v) in enumerate(points)]
    img1 = draw_marks(v1.rgb, [("P", col + 0.5, r + 0.5)], color=(255, 255, 0))
    img2 = draw_marks(v2.rgb, marks)
    q = c.pick(
        [
            "Image 1 marks a point P. Which labeled point in image 2 shows the same 3D point?",
            "Point P in the first image lies on a surface of the scene. Which of the marked points in the second "
            "image is the same physical point?",
        ]
    )
    instr = c.pick(CHOICE_INSTRUCTIONS)
    options = [f"point {L}" for L in LETTERS[:4]]
    body = "\n".join(f"{L}. {o}" for L, o in zip(LETTERS, options))
    trace = (
        f"P lies on the {e.label} at depth {fmt(z)} m, i.e. {fmt_xyz(p_cam)} m in the first camera's frame. "
        f"In the second camera's frame that point is at {fmt_xyz(q2)} m, which projects to pixel "
        f"({u2:.0f}, {w2:.0f}) where point {letter} is drawn."
    )
    return QA(
        f"{q}\nOptions:\n{body}\n{instr}",
        letter,
        "choice",
        letter,
        options=options,
        think=trace,
        images=[img1, img2] + [v.rgb for v in c.views[2:]],
        extra={
            "uids": [e.uid],
            "point_image1": [round(col + 0.5, 1), round(r + 0.5, 1)],
            "point_image2": [round(u2, 1), round(w2, 1)],
        },
    )


# ------------------------------------------------------------------------------------------ object relation


def ask_mv_relation(c: Ctx) -> QA | None:
    n = names(c.scene)
    in1 = [e for e in c.visible(0, furniture=c.scene.layout == "room") if e.uid in n]
    in2 = [e for e in c.visible(1, furniture=c.scene.layout == "room") if e.uid in n]
    only2 = [e for e in in2 if e not in in1]
    if not in1 or not in2:
        return None
    a = c.pick(in1)
    pool = [e for e in (only2 or in2) if e.uid != a.uid]
    if not pool:
        return None
    b = c.pick(pool)
    cam1 = c.views[0].camera
    pa, pb = cam_xyz(cam1, a), cam_xyz(cam1, b)
    base = (
        f"In the first camera's frame, the {n[a.uid]} (seen in image 1) is at {fmt_xyz(pa)} m and the "
        f"{n[b.uid]} (seen in image 2) is at {fmt_xyz(pb)} m."
    )
    extra = {"uids": [a.uid, b.uid]}
    style = int(c.rng.integers(3))
    if style == 0:
        d = center_distance(a, b)
        q = c.pick(
            [
                f"The {n[a.uid]} appears in image 1 and the {n[b.uid]} in image 2. How far apart are their "
                "centers?",
                f"What is the distance between the {n[a.uid]} and the {n[b.uid]}?",
            ]
        )
        return numeric(
            c.rng,
            q,
            d,
            "m",
            2,
            think=base + f"\nTheir distance is |{fmt_xyz(pb - pa)}| = {fmt(d)} m.",
            extra=extra,
        )
    if style == 1:
        slack = 0.25 * (max(a.dims) + max(b.dims))
        if abs(pa[2] - pb[2]) < max(0.06, slack):
            return None
        closer = a if pa[2] < pb[2] else b
        q = f"Which is closer to the camera of image 1: the {n[a.uid]} or the {n[b.uid]}?"
        return choice(
            c.rng,
            q,
            n[closer.uid],
            [n[(b if closer is a else a).uid]],
            think=base + f"\nDepths {fmt(pa[2])} m and {fmt(pb[2])} m: the {n[closer.uid]} is closer.",
            extra=extra,
        )
    ang_a, ang_b = (math.degrees(math.atan2(p[0], p[2])) for p in (pa, pb))
    if abs(ang_a - ang_b) < 8:
        return None
    side = "right" if ang_b > ang_a else "left"
    q = f"From the viewpoint of image 1, is the {n[b.uid]} to the left or to the right of the {n[a.uid]}?"
    return choice(
        c.rng,
        q,
        side,
        ["left" if side == "right" else "right"],
        think=base + f"\nTheir horizontal angles are {ang_a:.0f} and {ang_b:.0f} degrees (positive is "
        f"right), so the {n[b.uid]} is to the {side}.",
        extra=extra,
    )


def ask_mv_caption(c: Ctx) -> QA | None:
    room = c.scene.layout == "room"
    seen = c.seen_anywhere(furniture=room)
    if len(seen) < 2:
        return None
    labels = sorted(e.label for e in seen)
    if c.checkable:
        q = c.pick(
            [
                "Which list contains exactly the objects seen across these images?",
                "Which description matches the scene shown in the images?",
            ]
        )
        return caption_choice(c, q, labels, "The images show ", False, extra={"uids": [e.uid for e in seen]})
    from collections import Counter

    m = relative_motion(c.views[0].camera, c.views[1].camera)
    turn = abs(m["turn_left_deg"])
    rel = "the opposite side" if turn > 135 else ("a similar direction" if turn < 45 else "the side")
    where = "in a room" if room else "on a wooden table"
    text_ = (
        f"The {len(c.views)} images show one scene {where} from different viewpoints. Across the views there are "
        f"{describe_count(Counter(labels))}. The second image looks at the scene from {rel} compared with the first."
    )
    q = c.pick(
        ["Describe the scene shown in these images.", "Summarize what the images show, combining all views."]
    )
    return text(q, text_, extra={"uids": [e.uid for e in seen]})


_LAYOUTS = (("tabletop", 0.75), ("room", 0.25))
SKILLS = [
    Skill("mv_det3d", "multi_image", _LAYOUTS, two_or_three, ask_mv_det3d, weight=0.2),
    Skill(
        "mv_correspondence",
        "multi_image",
        (("tabletop", 0.8), ("room", 0.2)),
        two,
        ask_correspondence,
        cot=True,
        weight=0.16,
    ),
    Skill("mv_relation", "multi_image", _LAYOUTS, two, ask_mv_relation, cot=True, weight=0.18),
    Skill("camera_motion", "multi_image", _LAYOUTS, motion_pair, ask_camera_motion, cot=True, weight=0.18),
    Skill("camera_camera", "multi_image", _LAYOUTS, two, ask_camera_camera, cot=True, weight=0.16),
    Skill("mv_caption", "multi_image", _LAYOUTS, two_or_three, ask_mv_caption, weight=0.12),
]
