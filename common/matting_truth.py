"""A matting ground-truth set made here, the same on every run: foregrounds with an exact alpha and colour (fur,
hair strands, motion blur, a translucent veil) cut from the photos in tests/data/, composited over saturated plain
colours and over other photos. Here because both sides measure with it: `make quality` (tools/quality.py, through
the service's pipeline), the service's own benchmark (`python -m inference_service.profile decontaminate`) and
the tests; none of them may import the others.

Made, not downloaded: the public matting sets with true alpha (Adobe Composition-1k, Distinctions-646, AM-2k,
P3M) are licensed for research only or not redistributable, and none ships on PyPI or npm. The photos are
scikit-image's sample data (astronaut: NASA, public domain; chelsea, coffee: CC0; rocket: SpaceX, CC0).

Every edge is drawn at SUPERSAMPLE x the size and box-averaged, so alpha is each pixel's true coverage: a strand
a third of a pixel wide has alpha about 1/3 there, as a hair in a photo does. The composite is
alpha x F + (1 - alpha) x B in floating point, rounded once to 8 bits.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
SUPERSAMPLE = 4
WIDTH, HEIGHT = 640, 480
# Plain saturated backgrounds, where a fringe of the old colour shows most: studio green, a red and a blue wall.
SATURATED = {"green": (20, 190, 50), "red": (205, 25, 30), "blue": (25, 55, 200)}
PHOTOS = ("rocket", "coffee")  # photo backgrounds (the foregrounds are cut from chelsea and astronaut)
# True alpha between these is the soft edge, where the measures of the edge are taken.
SOFT_LOW, SOFT_HIGH = 0.05, 0.95

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Foreground:
    """A foreground: alpha in [0, 1] [H, W] and its colour [H, W, 3] in 0..255 (meaningful where alpha > 0)."""

    name: str
    alpha: Floats
    colour: Floats


@dataclass(frozen=True)
class Composite:
    """A foreground over a background: the 8-bit image a user would send and the truth it was made from."""

    foreground: str
    background: str
    saturated: bool  # the background is a plain saturated colour
    image: npt.NDArray[np.uint8]  # [H, W, 3]
    alpha: Floats  # true alpha [H, W]
    colour: Floats  # true foreground colour [H, W, 3], 0..255

    @property
    def name(self) -> str:
        return f"{self.foreground}/{self.background}"

    def png(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.image, "RGB").save(buffer, "PNG", compress_level=1)
        return buffer.getvalue()

    @property
    def soft_edge(self) -> npt.NDArray[np.bool_]:
        return (self.alpha >= SOFT_LOW) & (self.alpha <= SOFT_HIGH)


def _photo(name: str, width: int, height: int, *, mirror: bool = False) -> Image.Image:
    """tests/data/<name>.jpg scaled (aspect kept) to cover width x height, cut around its centre."""
    with Image.open(DATA / f"{name}.jpg") as opened:
        rgb = opened.convert("RGB")
    if mirror:
        rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = max(width / rgb.width, height / rgb.height)
    scaled = rgb.resize((math.ceil(rgb.width * scale), math.ceil(rgb.height * scale)), Image.Resampling.BICUBIC)
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _reduce(hi: npt.NDArray[np.uint8]) -> Floats:
    """Box average of SUPERSAMPLE x SUPERSAMPLE blocks, in float (no 8-bit rounding of the truth)."""
    s = SUPERSAMPLE
    height, width = hi.shape[0] // s, hi.shape[1] // s
    blocks = hi.reshape(height, s, width, s, *hi.shape[2:]).astype(np.float32)
    reduced: Floats = blocks.mean(axis=(1, 3), dtype=np.float32)
    return reduced


def _ellipses(boxes: list[tuple[float, float, float, float]]) -> Floats:
    """Coverage in [0, 1] of a union of ellipses given by (left, top, right, bottom) in output pixels."""
    s = SUPERSAMPLE
    mask = Image.new("L", (WIDTH * s, HEIGHT * s), 0)
    draw = ImageDraw.Draw(mask)
    for left, top, right, bottom in boxes:
        draw.ellipse((left * s, top * s, right * s, bottom * s), fill=255)
    return _reduce(np.asarray(mask)) / 255.0


def _boundary_points(body: Floats, rng: np.random.Generator, count: int) -> npt.NDArray[np.float64]:
    """`count` points (x, y) drawn at random on the body's edge (coverage between 0.2 and 0.8)."""
    ys, xs = np.nonzero((body > 0.2) & (body < 0.8))
    chosen = rng.integers(0, len(xs), count)
    points: npt.NDArray[np.float64] = np.stack([xs[chosen], ys[chosen]], axis=1).astype(np.float64)
    return points


def _strands(
    body: Floats,
    photo: Floats,
    rng: np.random.Generator,
    *,
    count: int,
    length: tuple[float, float],
    width: tuple[float, float],
    curl: float,
    droop: float = 0.0,
) -> tuple[Floats, Floats]:
    """Hair or fur: thin curved strands rooted on the body's edge, pointing outwards, each of the photo's colour
    at its root (a little lighter or darker). Returns their coverage [H, W] and premultiplied colour [H, W, 3]."""
    s = SUPERSAMPLE
    coverage = Image.new("L", (WIDTH * s, HEIGHT * s), 0)
    colour = Image.new("RGB", (WIDTH * s, HEIGHT * s), (0, 0, 0))
    draw_coverage, draw_colour = ImageDraw.Draw(coverage), ImageDraw.Draw(colour)
    # The outward direction: down the gradient of the body's coverage.
    gy, gx = np.gradient(body)
    centre_y, centre_x = np.array(np.nonzero(body > 0.5)).mean(axis=1)
    for x, y in _boundary_points(body, rng, count):
        iy, ix = int(y), int(x)
        direction = -np.array([gx[iy, ix], gy[iy, ix]])
        if not np.any(direction):
            direction = np.array([x - centre_x, y - centre_y])
        angle = math.atan2(direction[1], direction[0]) + rng.normal(0.0, 0.35)
        steps = 12
        step = rng.uniform(*length) / steps
        bend = rng.normal(0.0, curl)
        shade = rng.uniform(0.8, 1.2)
        rgb = tuple(int(min(255.0, c * shade)) for c in photo[iy, ix])
        line_width = max(1, round(rng.uniform(*width) * s))
        points = [(x * s, y * s)]
        for _ in range(steps):
            angle += bend
            x += step * math.cos(angle)
            y += step * math.sin(angle) + droop * step
            points.append((x * s, y * s))
        draw_coverage.line(points, fill=255, width=line_width, joint="curve")
        draw_colour.line(points, fill=rgb, width=line_width, joint="curve")
    alpha = _reduce(np.asarray(coverage)) / 255.0
    # Overlapping strands: the colour image holds the last strand's colour, the coverage their union, so
    # coverage x colour stays consistent (a box average of colour where drawn, 0 elsewhere, is premultiplied).
    premultiplied = _reduce(np.asarray(colour))
    return alpha, premultiplied


def _over(top_alpha: Floats, top_premultiplied: Floats, alpha: Floats, premultiplied: Floats) -> tuple[Floats, Floats]:
    """Porter-Duff "over" in premultiplied colour."""
    keep = 1.0 - top_alpha
    return top_alpha + alpha * keep, top_premultiplied + premultiplied * keep[..., None]


def _foreground(name: str, alpha: Floats, premultiplied: Floats, fallback: Floats) -> Foreground:
    """Unpremultiplied colour (the photo's where alpha is 0: a value that never shows)."""
    safe = np.maximum(alpha, 1e-6)[..., None]
    colour = np.where(alpha[..., None] > 1e-6, premultiplied / safe, fallback)
    return Foreground(name, alpha.astype(np.float32), np.clip(colour, 0.0, 255.0).astype(np.float32))


def _box_blur_rows(values: Floats, length: int) -> Floats:
    """A horizontal box blur of `length` pixels (motion blur along x), edges held."""
    pad = length // 2
    padded = np.pad(values, [(0, 0), (pad, length - 1 - pad)] + [(0, 0)] * (values.ndim - 2), mode="edge")
    sums = np.cumsum(padded, axis=1, dtype=np.float64)
    sums = np.concatenate([np.zeros_like(sums[:, :1]), sums], axis=1)
    return ((sums[:, length:] - sums[:, :-length]) / length).astype(np.float32)


def cat_fur() -> Foreground:
    """The cat of chelsea.jpg inside a soft outline with dense short fur all round."""
    rng = np.random.default_rng(24_001)
    photo = np.asarray(_photo("chelsea", WIDTH, HEIGHT), dtype=np.float32)
    body = _ellipses([(150, 70, 450, 420), (300, 200, 560, 470), (170, 40, 260, 170), (340, 40, 430, 170)])
    fur, fur_premultiplied = _strands(body, photo, rng, count=2600, length=(5, 22), width=(0.25, 0.9), curl=0.05)
    alpha, premultiplied = _over(fur, fur_premultiplied, body, photo * body[..., None])
    return _foreground("fur", alpha, premultiplied, photo)


def long_hair() -> Foreground:
    """A head and shoulders from astronaut.jpg with long, falling, wavy strands of hair."""
    rng = np.random.default_rng(24_002)
    photo = np.asarray(_photo("astronaut", WIDTH, HEIGHT), dtype=np.float32)
    body = _ellipses([(165, 5, 345, 235), (60, 215, 580, 580)])
    hair, hair_premultiplied = _strands(
        body, photo, rng, count=700, length=(25, 90), width=(0.2, 0.7), curl=0.08, droop=0.5
    )
    alpha, premultiplied = _over(hair, hair_premultiplied, body, photo * body[..., None])
    return _foreground("hair", alpha, premultiplied, photo)


def motion_and_veil() -> Foreground:
    """A shape cut from astronaut.jpg (mirrored) moving sideways (a 25-pixel motion blur) above a translucent
    pale-blue veil at alpha 0.45, as glass or thin fabric."""
    photo = np.asarray(_photo("astronaut", WIDTH, HEIGHT, mirror=True), dtype=np.float32)
    body = _ellipses([(170, 60, 470, 330)])
    alpha, premultiplied = body, photo * body[..., None]
    alpha, premultiplied = _box_blur_rows(alpha, 25), _box_blur_rows(premultiplied, 25)
    veil = 0.45 * _ellipses([(120, 250, 520, 450)])
    veil_colour = np.broadcast_to(np.array([205.0, 225.0, 240.0], dtype=np.float32), photo.shape)
    alpha, premultiplied = _over(alpha, premultiplied, veil, veil_colour * veil[..., None])
    return _foreground("motion+veil", alpha, premultiplied, photo)


def foregrounds() -> list[Foreground]:
    return [cat_fur(), long_hair(), motion_and_veil()]


def backgrounds() -> list[tuple[str, bool, Floats]]:
    """(name, whether a plain saturated colour, RGB [H, W, 3] 0..255) for every background."""
    found = [
        (name, True, np.broadcast_to(np.array(rgb, dtype=np.float32), (HEIGHT, WIDTH, 3)))
        for name, rgb in SATURATED.items()
    ]
    found += [(name, False, np.asarray(_photo(name, WIDTH, HEIGHT), dtype=np.float32)) for name in PHOTOS]
    return found


def composite(foreground: Foreground, name: str, saturated: bool, background: Floats) -> Composite:
    alpha = foreground.alpha[..., None]
    image = alpha * foreground.colour + (1.0 - alpha) * background
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Composite(foreground.name, name, saturated, pixels, foreground.alpha, foreground.colour)


def truth_set() -> list[Composite]:
    """Every foreground over every background (3 x 5 = 15 composites of 640 x 480)."""
    grounds = backgrounds()
    return [composite(fg, *ground) for fg in foregrounds() for ground in grounds]
