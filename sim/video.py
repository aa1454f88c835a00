"""MP4 writing (H.264 via PyAV) for rollout videos people can open in any browser or player."""

from pathlib import Path

import av
import numpy as np


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """Write HxWx3 uint8 frames; odd sizes are padded by one pixel (yuv420p needs even dimensions)."""
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    ph, pw = h + h % 2, w + w % 2
    tmp = path.with_name(path.stem + ".part.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for f in frames:
            if (ph, pw) != (h, w):
                f = np.pad(f, ((0, ph - h), (0, pw - w), (0, 0)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
