"""Evaluation media on the host: episode videos, world-model dream strips, plots of vector-env episodes.

Videos are mp4 (H.264) through imageio-ffmpeg, whose wheel carries its own ffmpeg binary, and GIF through pillow
where that encoder is missing. Every file is written beside its final name and renamed into place, so wandb, a
browser or `make eval` running next to training never sees half a file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

# Border colours of the imagined panel in a dream strip: the context steps (posterior) and the open-loop ones.
CONTEXT_RGB = (40, 200, 40)
IMAGINED_RGB = (220, 40, 40)


def video_format() -> str:
    """"mp4" where imageio-ffmpeg and its binary are installed, else "gif"."""
    try:
        import imageio_ffmpeg

        return "mp4" if os.path.exists(imageio_ffmpeg.get_ffmpeg_exe()) else "gif"
    except (ImportError, RuntimeError):
        return "gif"


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be (T>0, H, W, 3) uint8, got {frames.dtype}{list(frames.shape)}")
    return frames


def write_video(stem: Path, frames: np.ndarray, fps: int, fmt: str | None = None) -> Path:
    """frames (T, H, W, 3) u8 -> `<stem>.mp4` (or `.gif`); returns the path. H and W must be even for mp4."""
    frames = _check_frames(frames)
    fmt = fmt or video_format()
    path = stem.with_name(f"{stem.name}.{fmt}")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        import imageio.v2 as iio

        # yuv420p plays everywhere (browsers, wandb); quality 8 of 10 keeps 64-pixel frames legible. The encoder
        # is a child process started by fork + exec at once, which jax's fork warning does not concern.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            with iio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, pixelformat="yuv420p",
                                macro_block_size=2, ffmpeg_log_level="error") as w:
                for f in frames:
                    w.append_data(f)
    elif fmt == "gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=max(1, round(1000 / fps)), optimize=False)
    else:
        raise ValueError(f"video format {fmt!r} must be mp4 or gif")
    os.replace(tmp, path)
    return path


def read_video(path: Path) -> np.ndarray:
    """Decode an mp4 or GIF written by `write_video` -> (T, H, W, 3) u8."""
    path = Path(path)
    if path.suffix == ".mp4":
        import imageio.v2 as iio

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            with iio.get_reader(path, format="FFMPEG") as r:
                return np.stack([np.asarray(f)[..., :3] for f in r])
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])


def upscale(frames: np.ndarray, k: int) -> np.ndarray:
    """(..., H, W, C) -> (..., k H, k W, C), nearest neighbour (64-pixel frames are small on screen)."""
    return frames.repeat(k, -3).repeat(k, -2) if k > 1 else frames


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Decoder means in [0, 1] units (any float) -> u8, clipped."""
    return np.clip(np.asarray(images, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def dream_strip(real: np.ndarray, recon: np.ndarray, imagined: np.ndarray, context: int,
                border: int = 2) -> np.ndarray:
    """Side by side per step: real | reconstruction (posterior) | imagined (posterior for the first `context`
    steps, then open loop), each (T, H, W, 3) u8 -> (T, H, 3 W, 3). The imagined panel gets a border: green
    while it still sees observations, red once it only imagines."""
    for name, a in (("real", real), ("recon", recon), ("imagined", imagined)):
        if a.shape != real.shape or a.dtype != np.uint8:
            raise ValueError(f"dream_strip: {name} is {a.dtype}{list(a.shape)}, expected uint8{list(real.shape)}")
    marked = imagined.copy()
    for t in range(len(marked)):
        rgb = CONTEXT_RGB if t < context else IMAGINED_RGB
        for sl in (np.s_[t, :border], np.s_[t, -border:], np.s_[t, :, :border], np.s_[t, :, -border:]):
            marked[sl] = rgb
    return np.concatenate([real, recon, marked], axis=2)


def episode_plot(path: Path, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, num_actions: int,
                 title: str) -> Path:
    """PNG of one vector-env episode: observation components over time (heat map), actions, rewards.

    obs (T+1, D) from the first observation to the last, actions (T,) taken after obs 0..T-1, rewards (T+1,)
    received on arriving at each observation (0 at the first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    obs, actions, rewards = np.asarray(obs, np.float32), np.asarray(actions), np.asarray(rewards, np.float32)
    if obs.ndim != 2 or rewards.shape != (len(obs),) or actions.shape != (len(obs) - 1,):
        raise ValueError(f"episode_plot: obs {obs.shape}, actions {actions.shape}, rewards {rewards.shape} "
                         "must be (T+1, D), (T,), (T+1,)")
    steps = np.arange(len(obs))
    fig, (ax_o, ax_a, ax_r) = plt.subplots(3, 1, figsize=(8, 6), sharex=True,
                                           gridspec_kw={"height_ratios": [3, 1, 1]})
    span = float(np.abs(obs).max()) or 1.0
    im = ax_o.imshow(obs.T, aspect="auto", cmap="coolwarm", vmin=-span, vmax=span, interpolation="nearest",
                     extent=(-0.5, len(obs) - 0.5, obs.shape[1] - 0.5, -0.5))
    fig.colorbar(im, cax=ax_o.inset_axes([1.01, 0.0, 0.015, 1.0]))  # outside the axes: widths stay equal
    ax_o.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_a.set_ylim(-0.5, num_actions - 0.5)
    ax_a.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=min(num_actions, 8), integer=True))
    ax_o.set_ylabel("observation\ncomponent")
    ax_o.set_title(title)
    ax_a.step(steps[:-1], actions, where="mid", color="tab:blue")
    ax_a.plot(steps[:-1], actions, ".", color="tab:blue")
    ax_a.set_ylabel("action")
    ax_r.bar(steps, rewards, color=np.where(rewards >= 0, "tab:green", "tab:red"))
    ax_r.axhline(0, color="black", lw=0.5)
    ax_r.set_ylabel("reward")
    ax_r.set_xlabel(f"step (return {rewards.sum():.3f} over {len(actions)} steps)")
    fig.subplots_adjust(left=0.1, right=0.88, top=0.94, bottom=0.09, hspace=0.12)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
