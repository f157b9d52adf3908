"""The glyphs alphabet: which letters become classes, rendered once per DejaVu face.

The 12 DejaVu faces that ship inside matplotlib (Sans, Serif, Sans Mono; regular, bold, oblique/italic,
bold-oblique/bold-italic) are the "writers". A letter qualifies when it is a plain letter (Unicode category
Lu/Ll/Lo, no decomposition, so no accented copies of a base letter) of the Latin, Greek, Cyrillic, Armenian or
Georgian script and all 12 faces have it in their character map.

Many qualifying letters are drawn identically or nearly so (Latin A / Greek Alpha / Cyrillic A; o / O once the
size is normalised away), which would make two classes indistinguishable. `select_alphabet` compares the rendered
bitmaps and keeps only one letter of each look-alike group.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

FACE_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
)
SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "GEORGIAN")
# The basic alphabets of each script come first when classes are taken in order; extended letters
# (IPA, Latin Extended, historic Cyrillic, ...) only fill up what remains.
BASIC_ALPHABETS = (
    (0x41, 0x5A), (0x61, 0x7A),  # Latin A-Z, a-z
    (0x391, 0x3A9), (0x3B1, 0x3C9),  # Greek Alpha-Omega, alpha-omega
    (0x410, 0x44F),  # Cyrillic A-ya
    (0x531, 0x556), (0x561, 0x587),  # Armenian capitals, small letters
    (0x10D0, 0x10F0),  # Georgian Mkhedruli
)  # fmt: skip
INK_FRACTION = 0.875  # the longer side of a letter's ink box spans this fraction of the master canvas


def font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def face_paths() -> list[Path]:
    """The 12 DejaVu font files, in FACE_FILES order; an error names any that is missing."""
    paths = [font_dir() / name for name in FACE_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"DejaVu fonts missing from matplotlib's data directory: {missing}; reinstall matplotlib"
        )
    return paths


def script_of(code_point: int) -> str:
    return unicodedata.name(chr(code_point)).split()[0]


def _is_basic(code_point: int) -> bool:
    return any(lo <= code_point <= hi for lo, hi in BASIC_ALPHABETS)


@lru_cache(maxsize=1)
def candidate_letters() -> tuple[int, ...]:
    """Code points of plain letters of SCRIPTS present in all 12 faces, in class-priority order:
    basic alphabets first, then extended letters; within each, by script (SCRIPTS order), then code point."""
    common: set[int] | None = None
    for path in face_paths():
        cmap = set(TTFont(path, lazy=True).getBestCmap())
        common = cmap if common is None else common & cmap
    letters = [
        cp
        for cp in common
        if unicodedata.category(chr(cp)) in ("Lu", "Ll", "Lo")
        and unicodedata.decomposition(chr(cp)) == ""
        and script_of(cp) in SCRIPTS
    ]
    return tuple(sorted(letters, key=lambda cp: (not _is_basic(cp), SCRIPTS.index(script_of(cp)), cp)))


def render_masters(code_points: tuple[int, ...], size: int) -> torch.Tensor:
    """Render each letter in each face as an ink mask, normalised to its ink box.

    Each mask is centred on the letter's ink box, whose longer side spans INK_FRACTION of the canvas, so the
    class is the letter's shape: its size and baseline position are removed (the per-image augmentation adds
    scale and shift back at random).

    Returns a float tensor [L, 12, size, size] in [0,1] (1 = ink).
    """
    render_px = int(round(1.5 * size))  # render larger than the canvas, then shrink: smooth, even strokes
    fonts = [ImageFont.truetype(str(path), render_px) for path in face_paths()]
    inner = INK_FRACTION * size
    masters = np.zeros((len(code_points), len(fonts), size, size), dtype=np.float32)
    scratch = Image.new("L", (3 * render_px, 3 * render_px))
    draw = ImageDraw.Draw(scratch)
    for i, cp in enumerate(code_points):
        for j, font in enumerate(fonts):
            draw.rectangle((0, 0, *scratch.size), fill=0)
            draw.text((scratch.width // 2, scratch.height // 2), chr(cp), font=font, fill=255, anchor="mm")
            box = scratch.getbbox()
            if box is None:
                raise ValueError(f"U+{cp:04X} renders empty in {FACE_FILES[j]}")
            glyph = scratch.crop(box)
            scale = inner / max(glyph.size)
            glyph = glyph.resize(
                (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.Resampling.BOX
            )
            canvas = Image.new("L", (size, size))
            canvas.paste(glyph, ((size - glyph.width) // 2, (size - glyph.height) // 2))
            masters[i, j] = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy(masters)


def blur(images: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Gaussian blur with zero padding (ink masks have zero background), as two matrix products.

    images: [B,C,H,W] with H == W; sigma: one float, or a tensor [B] (one sigma per image; 0 = unchanged).
    A banded [H,H] matrix per image does the 1-D blur, which on CPU is much faster than a 1-channel conv2d.
    """
    size = images.shape[-1]
    sigmas = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1)  # [B or 1, 1, 1, 1]
    position = torch.arange(size, dtype=torch.float32)
    offsets = position.view(-1, 1) - position.view(1, -1)  # [H,H]
    radius = torch.arange(-size + 1, size, dtype=torch.float32)
    safe = sigmas.clamp_min(1e-3)
    # Normalise by the full (unclipped) kernel sum: rows near the border lose weight, as with zero padding.
    norm = torch.exp(-(radius**2) / (2 * safe**2)).sum(-1, keepdim=True)
    matrix = torch.exp(-(offsets**2) / (2 * safe**2)) / norm  # [B or 1, 1, H, H]
    return matrix @ images @ matrix.transpose(-1, -2)


def lookalike_distances(masters: torch.Tensor, compare_size: int = 32) -> torch.Tensor:
    """Median over faces of the root-mean-square difference between two letters' bitmaps.

    masters: [L, F, H, H] ink masks. The comparison happens at `compare_size` pixels after a 1-px Gaussian blur,
    i.e. at about the resolution the classifier sees. Returns [L, L] (0 on the diagonal).
    """
    num_letters, num_faces, size, _ = masters.shape
    small = F.interpolate(masters.reshape(-1, 1, size, size), size=compare_size, mode="area")
    small = blur(small, 1.0).reshape(num_letters, num_faces, -1).transpose(0, 1).double()  # [F, L, P]
    # |a-b|^2 = |a|^2 + |b|^2 - 2ab as one batched matmul (torch.cdist is several times slower here);
    # float64 so that the rounding error stays far below any sensible threshold.
    sq_norms = (small * small).sum(-1)
    squared = sq_norms.unsqueeze(-1) + sq_norms.unsqueeze(-2) - 2 * small @ small.transpose(-1, -2)
    per_face = (squared.clamp_min(0) / small.shape[-1]).sqrt()  # [F, L, L]
    return per_face.median(dim=0).values.float()


def select_alphabet(threshold: float, master_size: int = 64) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Drop look-alikes: walk the candidates in priority order and keep a letter only if its distance
    (`lookalike_distances`) to every letter kept so far is at least `threshold`.

    Returns (kept code points in priority order, dropped code points).
    """
    candidates = candidate_letters()
    distances = lookalike_distances(render_masters(candidates, master_size))
    return _greedy_distinct(candidates, distances, threshold)


@lru_cache(maxsize=4)
def _cached_alphabet(threshold: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return select_alphabet(threshold)


def alphabet(threshold: float) -> tuple[int, ...]:
    """The look-alike-free letters in class-priority order (cached per threshold; fonts never change)."""
    return _cached_alphabet(float(threshold))[0]


def _greedy_distinct(
    candidates: tuple[int, ...], distances: torch.Tensor, threshold: float
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    kept: list[int] = []
    dropped: list[int] = []
    for i in range(len(candidates)):
        if kept and bool((distances[i, kept] < threshold).any()):
            dropped.append(candidates[i])
        else:
            kept.append(i)
    return tuple(candidates[i] for i in kept), tuple(dropped)
