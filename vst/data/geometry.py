"""Camera and 3D-box geometry in the VST conventions.

Camera frame (OpenCV): X right, Y down, Z forward, metres. Extrinsics are stored as `cam_to_world` 4x4 matrices.
A 9-value box is `[x, y, z, x_size, y_size, z_size, pitch, yaw, roll]`: centre in the camera frame, sizes along
the box's own axes, and the box-to-camera rotation as extrinsic x-y-z Euler angles (scipy `"xyz"`) in degrees
divided by 180 (so each lies in (-1, 1]), which is how VST-P writes its boxes. `box9_corners` is the inverse, so
scorers and tests can turn any answer back into corners.
"""

import math

import numpy as np
from scipy.spatial.transform import Rotation

# Box axes expressed in the object's local frame (object z is up): box x = object x, box y = down, box z =
# object y. A camera looking horizontally along the object's +y axis then sees the box with zero rotation.
BOX_FROM_OBJECT_AXES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# MuJoCo cameras look along -z with y up; OpenCV cameras look along +z with y down.
MUJOCO_FROM_OPENCV = np.diag([1.0, -1.0, -1.0])


def intrinsics(width: int, height: int, fovy_deg: float) -> np.ndarray:
    """Pinhole K of a MuJoCo camera: square pixels, principal point at the image centre."""
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def fov_degrees(K: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """(hfov, vfov) in degrees, as stated in the prompts."""
    hfov = 2 * math.degrees(math.atan(width / (2 * K[0, 0])))
    vfov = 2 * math.degrees(math.atan(height / (2 * K[1, 1])))
    return hfov, vfov


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def look_at(eye, target, roll_deg: float = 0.0) -> np.ndarray:
    """cam_to_world (OpenCV axes) of a camera at `eye` looking at `target` with world z up, then rolled."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-6:  # looking straight down/up: any horizontal x will do
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=1)
    if roll_deg:
        R = R @ Rotation.from_euler("z", roll_deg, degrees=True).as_matrix()
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, eye
    return T


def to_camera(cam_to_world: np.ndarray, points_world: np.ndarray) -> np.ndarray:
    """World points (..., 3) into the camera frame."""
    R, t = cam_to_world[:3, :3], cam_to_world[:3, 3]
    return (np.asarray(points_world, float) - t) @ R


def project(K: np.ndarray, points_cam: np.ndarray) -> np.ndarray:
    """Camera-frame points (..., 3) to pixel coordinates (..., 2); pixel (0, 0) is the top-left corner."""
    p = np.asarray(points_cam, float)
    return np.stack(
        [K[0, 0] * p[..., 0] / p[..., 2] + K[0, 2], K[1, 1] * p[..., 1] / p[..., 2] + K[1, 2]], -1
    )


def object_corners_world(center, dims, yaw: float) -> np.ndarray:
    """The 8 corners of an upright object box (dims along its local x, y, z) rotated by `yaw` about world z."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    return np.asarray(center, float) + (signs * np.asarray(dims, float) / 2) @ yaw_matrix(yaw).T


def box9_in_camera(center_world, dims, yaw: float, cam_to_world: np.ndarray) -> list[float]:
    """The VST 9-value box of an upright world object as seen from a camera."""
    R_cam_world = cam_to_world[:3, :3].T
    R_box = R_cam_world @ yaw_matrix(yaw) @ BOX_FROM_OBJECT_AXES
    pitch, yaw_b, roll = Rotation.from_matrix(R_box).as_euler("xyz", degrees=True) / 180.0
    centre = to_camera(cam_to_world, center_world)
    sx, sy, sz = dims
    return [*map(float, centre), float(sx), float(sz), float(sy), float(pitch), float(yaw_b), float(roll)]


def box9_corners(box9) -> np.ndarray:
    """Corners (8, 3) in the camera frame of a VST 9-value box (angles in degrees/180)."""
    b = np.asarray(box9, float)
    R = Rotation.from_euler("xyz", b[6:9] * 180.0, degrees=True).as_matrix()
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    return b[:3] + (signs * b[3:6] / 2) @ R.T


def canonical_yaw(yaw: float, symmetry: int, cam_to_world: np.ndarray) -> float:
    """Among the yaws that describe the same symmetric object, the one closest to facing the camera.

    `symmetry` is the order of the object's rotational symmetry about z (0 = any angle, e.g. a ball or cylinder;
    4 = a cube; 2 = a block; 1 = none). A box's yaw is otherwise unobservable for such objects, so answers use the
    representative whose x axis is nearest the camera's right direction.
    """
    right = cam_to_world[:2, 0]
    if symmetry == 1 or np.linalg.norm(right) < 1e-9:
        return yaw
    facing = math.atan2(right[1], right[0])
    if symmetry == 0:
        return facing
    step = 2 * math.pi / symmetry
    return facing + ((yaw - facing + step / 2) % step - step / 2)


def focal_unified_size(width: int, height: int, focal: float, base_focal: float) -> tuple[int, int]:
    """Image size after rescaling so that the focal length becomes `base_focal` (the FoV is unchanged)."""
    s = base_focal / focal
    return max(8, round(width * s)), max(8, round(height * s))
