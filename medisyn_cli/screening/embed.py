"""Embedders: images -> vectors whose similarity says "is this a copy of that".

Every embedder returns, for a list of PIL images, either L2-normalised float32 vectors (cosine similarity =
inner product) or, for hashes, packed binary codes (uint8, compared by Hamming distance). Similarities are
reported on one scale everywhere: higher is more similar, 1.0 is identical (for hashes 1 - hamming / bits).

    pixel              default, no weights: band-passed grey thumbnail of the image's central window,
                       standardised: cosine = normalised correlation of the two images
    phash              perceptual hash (imagehash, 256 bits), Hamming distance
    clip:<model>       open_clip image tower: a local folder (open_clip_config.json + weights), a checkpoint
                       file as clip:<arch>/<file>, an hf-hub: id, or <arch>/<pretrained tag>
    hf:<model>         transformers vision encoder (DINOv2, SigLIP, CLIP, ViT, ...) from a folder or hub id;
                       hf:<model>#cls or #mean picks the pooling (default: pooled output, else CLS)
    learned            the copy descriptor `index build` trains on an index's own images (screening/learned.py)

The registry (end of this module) is the one picker of every --embedder value: `register_embedder(name,
factory, help=..., prefix=False)`, `get_embedder(spec)`, `embedder_names()`, `embedders_help()`; other packages
add theirs through the `medisyn.embedders` entry point group (core.plugins). `Embedder.features(images)` gives
the raw features the judge and `evaluate fidelity` use (an encoder's output before normalisation).

Query-time views (`Embedder.default_views`, `View`): a copy made by a memorising model may be flipped,
turned, shifted, cropped or inverted. The screener embeds each query under several views and keeps the best
match, so such a copy still matches its source. Two view sets: "tuned" (flips; for `pixel` also a grid of
shifts up to 5% and crops to 90% / 95%: the views of indexes built before issue #16, used for them as they
are) and "general" (the default: for `pixel` also the 8 flips / quarter turns and their intensity inversions,
80% crops, 5-15% borders and rotations by 5 and 10 degrees). The best view is refined by `refine_views`.
Shift, crop, border and rotation views carry a small penalty (GEOMETRIC_PENALTY) subtracted from their
similarity: trying many alignments also raises the chance similarity of distinct images. Index vectors are
always plain (identity view) embeddings.

Default thresholds (`default_threshold`) were calibrated with benchmarks/screen_quality.py on the real 64x64
images of the shared sample data (6 data sets, 6,754 images); numbers in CALIBRATION and
benchmarks/results/screen_quality/. `medisyn index build` then calibrates the threshold of each index on its
own images (screen.calibrate), never below a calibrated default.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import HIGH_DEPTH, noise_variance, to_8bit, to_grey
from medisyn_cli.core.plugins import load_plugins

PIXEL_THRESHOLD = 0.97
GEOMETRIC_PENALTY = 0.015
# a query's noise is taken out of its similarities (`PixelEmbedder.noise_factors`) up to this share of its band-passed
# energy: at most a factor 1 / sqrt(1 - NOISE_SHARE) = 1.054, so a weakly patterned image's estimate cannot lift
# its chance matches far
NOISE_SHARE = 0.1
CROPS, ZOOM_OUT, ANGLES = (0.8,), (0.05, 0.1, 0.15), (-10.0, -5.0, 5.0, 10.0)  # the general view set's extras
ZOOM_IN = 0.9  # region views: the part of the query a training image's tile fills
# partial similarity: 8x8-pixel blocks of the thumbnail, the best half kept
PARTIAL_BLOCK, PARTIAL_KEEP = 8, 0.5
_OPERATORS_LOCK = threading.Lock()
OPERATORS = 72  # resampling operators kept: the coarse views' and every refinement's (about 1 MB each)
PHASH_THRESHOLD = 0.88  # 1 - 30/256 = 0.883: at most 30 of 256 bits differ
BLAS_THREADS: int | None = (
    1  # around the pixel embedder's small products (benchmarks/screen_blas.py: screen 1.8x faster)
)
MODEL_THRESHOLD = (
    0.95  # clip: / hf: -- NOT calibrated here (no weights offline); calibrate before relying on it
)
CALIBRATION = """\
How the defaults were chosen (benchmarks/screen_quality.py, seed 0):
- planted copies: 50 images per data set (300) x 9 transforms -- resize to 38 px and to 128 px, JPEG q70,
  Gaussian noise sigma 8/255, brightness and contrast x0.8..1.2, crop of 90-95% of the side at a random
  place (resized back), shift by up to 3 px (of 64) with edge fill, left-right and top-bottom flip -- each
  screened by Screener against its data set; detected = near_copy and the match is the source (or its
  near-duplicate group).
- false positives: 400 real images per data set (2,400), each screened against the 9 of 10 group-disjoint
  folds of its data set that do not hold it. Groups join same patient / source image (file names), the
  data README's near-duplicate test, and the same test after flips or a brightness/contrast fit: the brain
  MRI set alone holds ~250 flipped or re-windowed duplicates, which are copies, not false positives.
- pixel (threshold 0.97, geometric-view penalty 0.015): detection 100% on resize (both), JPEG,
  brightness/contrast and flips, 99.3% noise, 98.0% shift, 96.3% crop -> 99.3% overall; false positives
  0.71% (17 of 2,400: 11 MedNIST, mostly adjacent slices of one CT / MRI series that no file name links,
  4 brain MRI, 1 BCCD, 1 ISIC). At 0.965 false positives rise to 1.33%; at 0.975 crop detection is 89%.
- phash (0.88, flips only): 100% resize, JPEG, brightness/contrast and flips, 97.0% noise, 0% crop,
  5.3% shift -> 78.0% overall; false positives 0.79%. Use it for near-exact copies only.
- clip:/hf: default 0.95 is NOT calibrated (no weights offline): run the benchmark with
  --embedders clip:DIR / hf:DIR and pass a measured threshold.
- baseline, plain correlation of 32x32 grey images without views, at the threshold giving it <= 1% false
  positives (0.97, FP 0.58%): 98.7% noise, 3% crops, 13% shifts, 7% / 2% flips -> 58.2% overall.
"""


@dataclass(frozen=True)
class View:
    """A query-time view: a quarter turn and a small rotation, a flip, intensity inversion, then the box of the
    query that holds the source's full frame.

    `box` is (left, top, right, bottom) as fractions of the query's width and height; (0, 0, 1, 1) is the
    query as it is. A copy shifted right by 5% is undone by box (0.05, 0, 1.05, 1); a 90% crop by a box
    larger than the query, e.g. (-0.05, -0.05, 1.06, 1.06); a copy with a 10% border by a smaller one.
    `turn` counts quarter turns counter-clockwise, `angle` degrees counter-clockwise (corners filled black).
    """

    flip: str = ""  # "", "h" (left-right) or "v" (top-bottom)
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    penalty: float = (
        0.0  # subtracted from this view's similarity (many alignments tried -> stronger evidence needed)
    )
    turn: int = 0
    angle: float = 0.0
    invert: bool = False

    @property
    def name(self) -> str:
        """Short label for reports, e.g. 'hflip', 'rot90+hflip', 'invert' or 'box(0.05,0.00,1.05,1.00)'."""
        parts = [f"rot{90 * self.turn}"] if self.turn else []
        parts += [f"rot{self.angle:g}"] if self.angle else []
        parts += [self.flip + "flip"] if self.flip else []
        parts += ["invert"] if self.invert else []
        if self.box != (0.0, 0.0, 1.0, 1.0):
            parts.append("box(" + ",".join(f"{v:.2f}" for v in self.box) + ")")
        return "+".join(parts) or "identity"


IDENTITY = View()
FLIPS = (IDENTITY, View("h"), View("v"))
DIHEDRAL = FLIPS + (
    View(turn=1),
    View(turn=2),
    View(turn=3),
    View("h", turn=1),
    View("h", turn=3),
)  # 8 symmetries
VIEW_SETS = ("general", "tuned")
TILE_SIDE, TILE_OFFSETS = (
    0.72,
    tuple(round(0.28 * i / 3, 4) for i in range(4)),
)  # 4x4 tiles, 52% of the area each
TILES = tuple(
    View(box=(x, y, round(x + TILE_SIDE, 4), round(y + TILE_SIDE, 4)))
    for y in TILE_OFFSETS
    for x in TILE_OFFSETS
)  # regions of a training image, as views (index side: crops, partial copies)  # general: the default since issue #16; tuned: the views of indexes built before


@lru_cache(maxsize=1)
def _threadpools():
    """The BLAS libraries whose thread count is one setting for the whole process. Those threaded with OpenMP
    (faiss's OpenBLAS) are left out: their limit would be OpenMP's, which is per thread, and would hold faiss's
    searches in that thread to one thread too."""
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    return blas.select(
        threading_layer=[
            lib.info().get("threading_layer")
            for lib in blas.lib_controllers
            if lib.info().get("threading_layer") != "openmp"
        ]
    )


_BLAS = {"lock": threading.Lock(), "users": 0, "limiter": None}  # blas_threads's state, shared by threads


@contextmanager
def blas_threads(limit: int | None = None):
    """At most `limit` BLAS threads (default BLAS_THREADS; None: leave BLAS as it is) for small matrix products.
    Overlapping users (threads) share one limit: the first sets it, the last restores the original. Enter it first
    in the main thread around work that threads share (threadpoolctl's limit is unreliable when a worker thread
    sets it after the main thread has set and restored it)."""
    limit = BLAS_THREADS if limit is None else limit
    if limit is None:
        yield
        return
    with _BLAS["lock"]:
        if _BLAS["users"] == 0:
            _BLAS["limiter"] = _threadpools().limit(limits=limit)
        _BLAS["users"] += 1
    try:
        yield
    finally:
        with _BLAS["lock"]:
            _BLAS["users"] -= 1
            if _BLAS["users"] == 0:
                _BLAS["limiter"].restore_original_limits()


def apply_view(image, view: View):
    """The query under a view, as a PIL image (frame outside the query is filled by edge replication)."""
    from PIL import Image, ImageOps

    if view.turn % 4:
        image = image.transpose(
            (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[
                view.turn % 4
            ]
        )
    if view.angle:
        image = image.rotate(view.angle, Image.Resampling.BICUBIC)
    if view.invert:
        image = _inverted(image)
    if view.flip:
        image = ImageOps.mirror(image) if view.flip == "h" else ImageOps.flip(image)
    if view.box == (0.0, 0.0, 1.0, 1.0):
        return image
    width, height = image.size
    left, top, right, bottom = view.box
    pad = max(0, math.ceil(max(-left * width, -top * height, (right - 1) * width, (bottom - 1) * height)))
    if pad:
        image = _pad_edge(image, pad)
    box = (left * width + pad, top * height + pad, right * width + pad, bottom * height + pad)
    return image.resize((width, height), box=box)


def _inverted(image):
    """The image with its intensities reversed (8-bit: 255 - v; 16-bit and float grey: max + min - v)."""
    from PIL import Image, ImageOps

    if image.mode in HIGH_DEPTH:
        grey = to_grey(image)
        return Image.fromarray(grey.max() + grey.min() - grey, mode="F")
    return (
        ImageOps.invert(image.convert("RGB") if image.mode != "L" else image).convert(image.mode)
        if image.mode in ("L", "RGB")
        else ImageOps.invert(to_8bit(image))
    )


def _pad_edge(image, pad: int):
    from PIL import Image

    array = np.asarray(image)
    widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (array.ndim - 2)
    return Image.fromarray(np.pad(array, widths, mode="edge"), mode=image.mode)


# --- the interface --------------------------------------------------------------------------------------


class Embedder:
    """Images -> vectors. Subclasses set name, dim, binary, default_threshold and implement `_embed`."""

    name: str = ""
    dim: int = 0
    binary: bool = False
    default_threshold: float = 0.9
    calibrated_default: bool = True  # default_threshold measured on patient-split real data (False: a guess)
    has_parts: bool = False  # vectors are images, so partial_similarity can compare their parts (pixel)
    # embed_views may run in several threads at once, one core each (numpy / PIL: no thread pool of its own)
    concurrent: bool = False
    features_normalised: bool = True  # `features` are embed's unit vectors (False: an encoder's raw output)

    def settings(self) -> dict:
        """Everything that changes the vectors; stored in index.json and compared when an index is loaded."""
        return {}

    def embed(self, images: list) -> np.ndarray:
        """(N, dim) float32 L2-normalised vectors, or (N, dim // 8) uint8 packed bits for binary embedders."""
        if not images:
            return np.zeros((0, self.code_size), dtype=np.uint8 if self.binary else np.float32)
        return self._embed(images)

    def features(self, images: list) -> np.ndarray:
        """(N, dim) float32 features for statistics (FID, a judge's classifier): a neural encoder's raw output,
        before screening's L2 normalisation (`features_normalised` False), else `embed`'s vectors; MedisynError
        for binary hash codes, which have no mean or covariance."""
        if self.binary:
            raise MedisynError(f"{self.name}: binary hash codes are not features (no mean or covariance)")
        return np.asarray(self.embed(images), dtype=np.float32)

    def embed_views(self, images: list, views: tuple[View, ...] | list[View]) -> np.ndarray:
        """(N, V, ...) embeddings of every image under every view (views in the order given)."""
        flat = self.embed([apply_view(image, view) for image in images for view in views])
        return flat.reshape(len(images), len(views), -1)

    def default_views(self, view_set: str = "general") -> tuple[View, ...]:
        """Views the screener searches the whole index with: identity first, then flips (subclasses may add more)."""
        return FLIPS

    def refine_views(self, view: View) -> tuple[View, ...]:
        """Views near `view` (a query's best), compared with its best candidates only (none by default)."""
        return ()

    def noise_factors(self, images: list) -> np.ndarray:
        """Per query image, the factor taking its similarities to those of its noise-free version (1 here: no
        estimate)."""
        return np.ones(len(images), np.float32)

    def embed_queries(self, images: list, views) -> tuple[np.ndarray, np.ndarray]:
        """(`embed_views`, `noise_factors`) of query images, in one pass over them where the embedder can."""
        return self.embed_views(images, views), self.noise_factors(images)

    def partial_similarity(self, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """How well part of the query matches each candidate vector ((k,) similarities), for embedders whose vectors
        are images (`has_parts`)."""
        raise NotImplementedError(f"{self.name} vectors have no parts")

    def region_views(self) -> tuple[View, ...]:
        """Views a query is compared with the training images' tiles under (TILES): identity and flips by default."""
        return FLIPS

    def index_record(self) -> dict:
        """Entries this embedder adds to index.json (the learned embedder: its weights and training)."""
        return {}

    @property
    def code_size(self) -> int:
        """Width of one vector as stored: dim floats, or dim / 8 bytes for binary codes."""
        return self.dim // 8 if self.binary else self.dim

    def similarity_from_distance(self, distances: np.ndarray) -> np.ndarray:
        """Index scores -> similarity (higher = more similar): inner product as is, Hamming -> 1 - d / bits."""
        distances = np.asarray(distances, dtype=np.float32)
        return 1.0 - distances / self.dim if self.binary else distances

    def valid_threshold(self, threshold: float) -> float:
        """`threshold` as a float if it is a similarity this embedder can reach, else MedisynError."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
            raise MedisynError(f"threshold must be a number in (0, 1], got {threshold!r}")
        if not 0.0 < threshold <= 1.0:
            raise MedisynError(
                f"threshold {threshold} is outside (0, 1]: similarities of '{self.name}' are "
                f"{'1 - hamming/bits' if self.binary else 'cosine'}, 1.0 meaning identical "
                f"(default {self.default_threshold})"
            )
        return float(threshold)

    def _embed(self, images: list) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim})"


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero); float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# --- pixel ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) row-normalised Gaussian blur with reflected borders; identity for sigma 0 (cached, read-only)."""
    if sigma <= 0:
        matrix = np.eye(n, dtype=np.float32)
        matrix.flags.writeable = False
        return matrix
    rows = np.arange(n)
    matrix = np.zeros((n, n), dtype=np.float64)
    for offset in range(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1):
        cols = np.abs(rows + offset)
        cols = np.where(cols > n - 1, 2 * (n - 1) - cols, cols)
        np.add.at(matrix, (rows, cols), math.exp(-offset * offset / (2 * sigma * sigma)))
    matrix = (matrix / matrix.sum(axis=1, keepdims=True)).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


class PixelEmbedder(Embedder):
    """Grey thumbnail of the central window, band-passed, standardised and L2-normalised (no weights).

    Steps: luminance (16-bit and float kept exact) -> the central `window` of the frame resampled to
    size x size (antialiased triangle filter, edges replicated) -> difference of Gaussians (sigma `blur` minus
    sigma `background`, in thumbnail pixels), which removes the coarse anatomy every image of a class shares
    -> subtract the mean, divide by the norm. Cosine similarity is then the normalised correlation of the two
    band-passed thumbnails: invariant to brightness and contrast, tolerant of resizing, JPEG and noise. The
    central window leaves room for the shift and crop views that catch shifted and cropped copies. Each view
    is one linear operator (resample, then blur) applied as two matrix products, so 300 views cost ~10 ms.
    """

    has_parts = concurrent = True

    def __init__(self, size: int = 32, window: float = 0.8, blur: float = 1.2, background: float = 4.0):
        self.name, self.size, self.window, self.blur, self.background = (
            "pixel",
            size,
            window,
            blur,
            background,
        )
        self.dim = size * size
        self.default_threshold = PIXEL_THRESHOLD
        self.work = math.ceil(2 * size / window)  # larger images are first shrunk to this (2x the thumbnail)
        self._operators: OrderedDict = OrderedDict()  # least recently used dropped beyond OPERATORS

    def settings(self) -> dict:
        return {
            "size": self.size,
            "window": self.window,
            "blur": self.blur,
            "background": self.background,
            "grey": "luminance 0.299/0.587/0.114, alpha over black",
            "resample": "triangle",
            "work": self.work,
            "geometric_view_penalty": GEOMETRIC_PENALTY,
        }

    def _embed(self, images: list) -> np.ndarray:
        return self.embed_views(images, (IDENTITY,))[:, 0]

    def embed_views(self, images: list, views: tuple[View, ...] | list[View]) -> np.ndarray:
        with blas_threads():
            return self._embed_views(images, views)

    def embed_queries(self, images: list, views) -> tuple[np.ndarray, np.ndarray]:
        """The views and the noise factors from one working grey copy of each image."""
        factors = np.ones(len(images), np.float32)
        with blas_threads():
            return self._embed_views(images, views, factors), factors

    def _embed_views(
        self, images: list, views: tuple[View, ...] | list[View], factors: np.ndarray | None = None
    ) -> np.ndarray:
        """(N, V, dim) vectors; `factors`: filled with each image's `_noise_factor` where given."""
        out = np.empty((len(images), len(views), self.dim), dtype=np.float32)
        groups: dict = {}  # (turn, angle) -> positions: each rotation of the image is resampled once
        for position, view in enumerate(views):
            groups.setdefault((view.turn % 4, view.angle), []).append(position)
        plain = {key: tuple(View(views[p].flip, views[p].box) for p in at) for key, at in groups.items()}
        inverted = [position for position, view in enumerate(views) if view.invert]
        operators: dict = {}  # (image shape, group) -> operator, looked up once per call
        for n, image in enumerate(images):
            grey = self._working_grey(image)
            if factors is not None:
                factors[n] = self._noise_factor(grey)
            for (turn, angle), positions in groups.items():
                turned = _rotated(grey, turn, angle)
                key = (turned.shape, turn, angle)
                if key not in operators:
                    operators[key] = self._operator(turned.shape, plain[turn, angle])
                out[n, positions] = self._band(turned, operators[key])
            # the band-passed, standardised thumbnail of the inverted image is the negation
            out[n, inverted] = -out[n, inverted]
        return out

    def noise_factors(self, images: list) -> np.ndarray:
        """Per query image, the factor undoing what its white noise takes from its similarities: noise of variance
        s2 (`noise_variance` of the working grey) adds about s2 * E (`_noise_energy`) to the squared norm n2 of the
        band-passed thumbnail and nothing to its products with other images, so the noise-free image's similarities
        are the noisy one's times sqrt(n2 / (n2 - s2 * E)). Noise counts for at most NOISE_SHARE of n2. Measured on
        the identity view and used for every view (the crops' thumbnails hold more noise: an underestimate)."""
        return np.array([self._noise_factor(self._working_grey(image)) for image in images], np.float32)

    def _noise_factor(self, grey: np.ndarray) -> float:
        """`noise_factors` of one working grey image."""
        band = self._raw_band(grey, self._operator(grey.shape, (IDENTITY,)))[0]
        energy = float(band @ band)
        if energy <= 0.0:
            return 1.0
        noise = min(noise_variance(grey) * self._noise_energy(grey.shape), NOISE_SHARE * energy)
        return math.sqrt(energy / (energy - noise))

    def _noise_energy(self, shape: tuple[int, int]) -> float:
        """The expected squared norm of the identity view's centred band-passed thumbnail of unit white noise on a
        grey image of `shape`: the squared Frobenius norm of the linear map A1 G C1 - A2 G C2 (low-pass minus
        high-pass, `_new_operator`) less its mean's share."""
        rows, _, cols, _ = self._operator(shape, (IDENTITY,))
        a, c = rows.astype(np.float64).reshape(2, self.size, shape[0]), cols[:, 0].astype(np.float64)
        whole = (a[0] ** 2).sum() * (c[0] ** 2).sum() + (a[1] ** 2).sum() * (c[1] ** 2).sum()
        whole -= 2.0 * (a[0] * a[1]).sum() * (c[0] * c[1]).sum()
        u, v = a.sum(axis=1), c.sum(axis=2)  # the map's column sums: what the mean of the thumbnail takes
        mean = (
            (u[0] @ u[0]) * (v[0] @ v[0])
            + (u[1] @ u[1]) * (v[1] @ v[1])
            - 2.0 * (u[0] @ u[1]) * (v[0] @ v[1])
        )
        return float(whole - mean / self.dim)

    def _band(self, grey: np.ndarray, operator: tuple) -> np.ndarray:
        """(V, dim) band-passed, standardised, L2-normalised thumbnails of one grey image under the flip/box views
        of `operator` (`_operator`)."""
        flat = self._raw_band(grey, operator)
        # a flat image has no pattern: zero vector (similar to nothing), not amplified rounding noise
        tolerance = 1e-4 * float(grey.max() - grey.min()) + 1e-5 * float(np.abs(grey).max()) * math.sqrt(
            self.dim
        )
        flat[np.linalg.norm(flat, axis=1) <= tolerance] = 0.0
        return l2_normalise(flat)

    def _raw_band(self, grey: np.ndarray, operator: tuple) -> np.ndarray:
        """(V, dim) band-passed thumbnails less their means, not normalised."""
        rows, row_of, cols, by_col = operator
        # each distinct vertical resampling, low-pass and high-pass
        resampled = (rows @ grey).reshape(2, -1, self.size, grey.shape[1])
        band = np.empty((2, len(row_of), self.size, self.size), np.float32)  # low-pass and high-pass
        for col, positions in enumerate(by_col):  # one product per pass and horizontal resampling
            for i in range(2):
                block = resampled[i, row_of[positions]].reshape(-1, resampled.shape[3]) @ cols[i, col]
                band[i, positions] = block.reshape(len(positions), self.size, self.size)
        flat = (band[0] - band[1]).reshape(len(row_of), self.dim)
        return flat - flat.mean(axis=1, keepdims=True)

    def _working_grey(self, image) -> np.ndarray:
        """Luminance as float32, shrunk (antialiased) to at most `work` pixels a side (frame fractions unchanged)."""
        from PIL import Image

        grey = to_grey(image)
        height, width = grey.shape
        if max(height, width) > self.work:
            shape = (min(width, self.work), min(height, self.work))
            grey = np.asarray(
                Image.fromarray(grey, mode="F").resize(shape, Image.Resampling.BOX), dtype=np.float32
            )
        return grey.astype(np.float32)

    def _operator(self, shape: tuple[int, int], views: tuple[View, ...]) -> tuple:
        """The views' resampling operator for images of `shape` (`_new_operator`), cached."""
        key = (shape, views)
        with _OPERATORS_LOCK:  # a screener embeds its next images in a thread while it refines these
            if key in self._operators:
                self._operators.move_to_end(key)
                return self._operators[key]
        operator = self._new_operator(shape, views)
        with _OPERATORS_LOCK:
            if (
                len(self._operators) >= OPERATORS
            ):  # the coarse views' operator stays: it is used for every image
                self._operators.popitem(last=False)
            self._operators[key] = operator
        return operator

    def _new_operator(self, shape: tuple[int, int], views: tuple[View, ...]) -> tuple:
        """The views' resamplings, low-pass and high-pass, each distinct one once (views on a grid share their rows
        or columns): rows (2 * Y * size, H), each view's row block (V,), cols (2, X, W, size), and the views of
        each column block."""
        low, high = _gaussian_matrix(self.size, self.blur), _gaussian_matrix(self.size, self.background)
        high = high if self.background > 0 else np.zeros_like(high)
        row_keys = [(v.box[1], v.box[3], v.flip == "v") for v in views]
        col_keys = [(v.box[0], v.box[2], v.flip == "h") for v in views]
        row_index, col_index = (
            {key: i for i, key in enumerate(dict.fromkeys(keys))} for keys in (row_keys, col_keys)
        )
        ry = np.stack([self._resample_axis(*k, shape[0]) for k in row_index])  # (Y, size, H)
        rx = np.stack([self._resample_axis(*k, shape[1]) for k in col_index])  # (X, size, W)
        rows = np.stack([low @ ry, high @ ry]).reshape(-1, shape[0])
        cols = np.stack([low @ rx, high @ rx]).transpose(0, 1, 3, 2)
        col_of = np.array([col_index[k] for k in col_keys])
        return (
            rows.astype(np.float32),
            np.array([row_index[k] for k in row_keys]),
            np.ascontiguousarray(cols, dtype=np.float32),
            [np.flatnonzero(col_of == col) for col in range(len(col_index))],
        )

    def _resample_axis(self, start: float, stop: float, flipped: bool, length: int) -> np.ndarray:
        """(size, length) weights taking the central window of [start, stop) (frame fractions) along one axis of
        `length` pixels to `size` samples, reversed for a flip along that axis."""
        margin = (stop - start) * (1.0 - self.window) / 2
        matrix = resample_matrix(length, (start + margin) * length, (stop - margin) * length, self.size)
        return matrix[:, ::-1] if flipped else matrix

    def default_views(self, view_set: str = "general") -> tuple[View, ...]:
        """tuned: identity, flips, shifts up to 5% of the frame and 90% / 95% crops on a one-thumbnail-pixel grid
        (the views of indexes built before issue #16). general: those, plus the 8 flips / quarter turns and their
        intensity inversions, 80% crops, 5-15% borders (zoom-out) and rotations by 5 and 10 degrees."""
        tuned = FLIPS + pixel_views(self.size, self.window, crops=(0.9, 0.95))
        if view_set == "tuned":
            return tuned
        if view_set != "general":
            raise MedisynError(f"view set '{view_set}': expected one of {', '.join(VIEW_SETS)}")
        turns = DIHEDRAL + tuple(replace(view, invert=True) for view in DIHEDRAL)
        zoom_out = tuple(
            View("", (b, b, 1 - b, 1 - b), GEOMETRIC_PENALTY) for b in (p / (1 + 2 * p) for p in ZOOM_OUT)
        )
        angles = tuple(View(angle=a, penalty=GEOMETRIC_PENALTY) for a in ANGLES)
        crops = pixel_views(self.size, self.window, crops=CROPS)[
            len(pixel_views(self.size, self.window, crops=())) :
        ]
        return turns + tuned[3:] + crops + zoom_out + angles

    def region_views(self) -> tuple[View, ...]:
        """Views a query is compared with the training images' tiles under: the tuned views and a grid of 90% zooms
        into the query (a crop of a training image: the query holds one of its tiles), and the query's own tiles
        (a partial copy: a region of the query holds a region of a training image)."""
        side, steps = ZOOM_IN, np.linspace(0.0, 1.0 - ZOOM_IN, 5)
        zoom = tuple(
            View(
                "",
                (
                    round(float(x), 6),
                    round(float(y), 6),
                    round(float(x) + side, 6),
                    round(float(y) + side, 6),
                ),
                GEOMETRIC_PENALTY,
            )
            for y in steps
            for x in steps
        )
        return (
            self.default_views("tuned") + zoom + tuple(replace(t, penalty=GEOMETRIC_PENALTY) for t in TILES)
        )

    def partial_similarity(self, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The correlation of the query's thumbnail with each candidate's over the PARTIAL_KEEP share of their
        PARTIAL_BLOCK-pixel blocks where the two agree best: a copy with a marker, text or another local change
        on part of it still agrees on the rest (benchmarks/screen_quality.py, overlay)."""
        blocks = self.size // PARTIAL_BLOCK

        def tiled(v: np.ndarray) -> np.ndarray:  # (n, blocks * blocks, PARTIAL_BLOCK ** 2)
            v = v.reshape(-1, blocks, PARTIAL_BLOCK, blocks, PARTIAL_BLOCK).transpose(0, 1, 3, 2, 4)
            return v.reshape(len(v), blocks * blocks, -1)

        q, x = tiled(query[None]), tiled(candidates)
        keep = max(1, round(PARTIAL_KEEP * blocks * blocks))
        best = np.argsort(((q - x) ** 2).sum(axis=2), axis=1, kind="stable")[:, :keep, None]
        q = np.take_along_axis(np.broadcast_to(q, x.shape), best, 1).reshape(len(x), -1)
        x = np.take_along_axis(x, best, 1).reshape(len(x), -1)
        q, x = q - q.mean(axis=1, keepdims=True), x - x.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(q, axis=1) * np.linalg.norm(x, axis=1)
        return np.where(norms > 0, (q * x).sum(axis=1) / np.maximum(norms, 1e-12), 0.0).astype(np.float32)

    def refine_views(self, view: View) -> tuple[View, ...]:
        """The 26 views half a thumbnail pixel and 2.5% zoom around `view` (same turn, flip, inversion), with the
        geometric penalty; around a rotated view also 2.5 degrees either side."""
        left, top, right, bottom = view.box
        side = right - left
        half = self.window / self.size * side / 2
        views = []
        for zoom in (1 / 1.025, 1.0, 1.025):
            for dy in (-half, 0.0, half):
                for dx in (-half, 0.0, half):
                    if zoom == 1.0 and dx == 0.0 and dy == 0.0:
                        continue
                    cx, cy, new = (left + right) / 2 + dx, (top + bottom) / 2 + dy, side * zoom
                    box = (cx - new / 2, cy - new / 2, cx + new / 2, cy + new / 2)
                    views.append(
                        replace(view, box=tuple(round(v, 6) for v in box), penalty=GEOMETRIC_PENALTY)
                    )
        if view.angle:
            views += [replace(view, angle=view.angle + d, penalty=GEOMETRIC_PENALTY) for d in (-2.5, 2.5)]
        return tuple(views)


def _rotated(grey: np.ndarray, turn: int, angle: float) -> np.ndarray:
    """A grey image turned by quarter turns (exact) and rotated by `angle` degrees (bicubic, corners black)."""
    from PIL import Image

    if turn:
        grey = np.ascontiguousarray(np.rot90(grey, turn))
    if angle:
        grey = np.asarray(
            Image.fromarray(grey, mode="F").rotate(angle, Image.Resampling.BICUBIC), dtype=np.float32
        )
    return grey


def resample_matrix(length: int, start: float, stop: float, size: int) -> np.ndarray:
    """(size, length) antialiased triangle-filter weights sampling [start, stop) of a signal; edges replicated."""
    scale = (stop - start) / size
    support = max(scale, 1.0)
    centres = start + (np.arange(size) + 0.5) * scale
    taps = np.arange(math.floor(start - support) - 1, math.ceil(stop + support) + 2)
    weights = np.clip(1.0 - np.abs(taps[None, :] + 0.5 - centres[:, None]) / support, 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    matrix = np.zeros((size, length))
    # every tap added in order (clipped edge taps add up as a loop over them adds them)
    np.add.at(matrix, (slice(None), np.clip(taps, 0, length - 1)), weights)
    return matrix


def pixel_views(
    size: int, window: float, shift: float = 0.05, crops: tuple[float, ...] = (0.9,)
) -> tuple[View, ...]:
    """Shift views (source frame moved by up to `shift`) and crop views (query = a `crop` fraction of the source,
    any offset), on a grid of one thumbnail pixel."""
    views = []
    for crop in (1.0,) + tuple(crops):
        side = 1.0 / crop  # the source frame's side in query units
        low, high = (
            (-shift, shift) if crop == 1.0 else (1.0 - side, 0.0)
        )  # where the frame's left/top edge may be
        count = int(round((high - low) / (window / size * side))) + 1
        for top in np.linspace(low, high, count):
            for left in np.linspace(low, high, count):
                if crop == 1.0 and abs(left) < 1e-9 and abs(top) < 1e-9:
                    continue
                box = (left, top, left + side, top + side)
                views.append(View("", tuple(round(float(v), 6) for v in box), GEOMETRIC_PENALTY))
    return tuple(views)


# --- phash ----------------------------------------------------------------------------------------------


class PHashEmbedder(Embedder):
    """Perceptual hash (DCT of a grey thumbnail, imagehash.phash): hash_size**2 bits packed into bytes."""

    concurrent = True

    def __init__(self, hash_size: int = 16):
        self.name, self.hash_size, self.dim, self.binary = "phash", hash_size, hash_size * hash_size, True
        self.default_threshold = PHASH_THRESHOLD

    def settings(self) -> dict:
        return {"hash_size": self.hash_size, "highfreq_factor": 4, "library": "imagehash.phash"}

    def _embed(self, images: list) -> np.ndarray:
        import imagehash

        bits = [imagehash.phash(to_8bit(image), hash_size=self.hash_size).hash.ravel() for image in images]
        return np.packbits(np.stack(bits).astype(np.uint8), axis=1)


# --- learned encoders -----------------------------------------------------------------------------------


class TorchEmbedder(Embedder):
    """Shared parts of the neural embedders: device choice, raw features through `_forward`, normalisation."""

    default_threshold = MODEL_THRESHOLD
    calibrated_default = False
    features_normalised = False

    def features(self, images: list) -> np.ndarray:
        """(N, dim) float32 raw encoder outputs (as torch-fidelity's CLIP / DINOv2 features), not normalised."""
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            features = self._forward([to_8bit(image).convert("RGB") for image in images])
        return features.float().cpu().numpy()

    def _embed(self, images: list) -> np.ndarray:
        return l2_normalise(self.features(images))

    def _forward(self, images: list):
        raise NotImplementedError


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _weights_error(spec: str, exc: Exception, how: str) -> MedisynError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MedisynError(
        f"{spec}: cannot load the model ({first[:160].rstrip()}...); {how}"
        if len(first) > 160
        else f"{spec}: cannot load the model ({first}); {how}"
    )


class ClipEmbedder(TorchEmbedder):
    """open_clip image tower: clip:<folder> | clip:hf-hub:<org/repo> | clip:<arch>/<tag or checkpoint file>."""

    def __init__(self, model: str):
        self.model_id, self.name = model, f"clip:{model}"
        self.model, self.preprocess = self._load(model)
        self.device = next(self.model.parameters()).device
        self.dim = int(self.model.visual.output_dim)

    def settings(self) -> dict:
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        return {
            "model": self.model_id,
            "library": "open_clip",
            "dim": self.dim,
            "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        }

    def _load(self, model: str):
        import open_clip

        repo = model[len("hf-hub:") :] if model.startswith("hf-hub:") else "<org/repo>"
        how = (
            f"where the hub is unreachable, fetch the weights on a machine with internet "
            f"(`huggingface-cli download {repo} --local-dir DIR`) and pass the folder: clip:DIR"
        )
        if Path(model).is_dir():
            name, pretrained = f"local-dir:{Path(model)}", None
        elif model.startswith("hf-hub:"):
            name, pretrained = model, None
        elif "/" in model:
            name, pretrained = model.split("/", 1)
            if name not in open_clip.list_models():
                raise MedisynError(
                    f"clip:{model}: unknown open_clip architecture '{name}' "
                    f"(e.g. ViT-B-32, ViT-B-16, ViT-L-14; see open_clip.list_models())"
                )
        else:
            raise MedisynError(
                f"clip:{model}: give weights: clip:<folder>, clip:hf-hub:<org/repo>, or "
                f"clip:<arch>/<pretrained tag or checkpoint file>, e.g. clip:ViT-B-32/laion2b_s34b_b79k"
            )
        try:
            loaded, preprocess = open_clip.create_model_from_pretrained(
                name, pretrained=pretrained, device=_device()
            )
        except MedisynError:
            raise
        except Exception as exc:  # open_clip raises RuntimeError, ValueError, OSError, ...
            raise _weights_error(f"clip:{model}", exc, how) from exc
        return loaded.eval(), preprocess

    def _forward(self, images: list):
        import torch

        batch = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        return self.model.encode_image(batch)


class HFEmbedder(TorchEmbedder):
    """transformers vision encoder (AutoModel + AutoImageProcessor); hf:<folder or hub id>[#pooler|#cls|#mean]."""

    POOLING = ("auto", "pooler", "cls", "mean")

    def __init__(self, model: str):
        self.model_id, _, pool = model.partition("#")
        self.pool, self.name = pool or "auto", f"hf:{model}"
        if self.pool not in self.POOLING:
            raise MedisynError(
                f"hf:{model}: unknown pooling '#{self.pool}' (valid: {', '.join(self.POOLING)})"
            )
        self.model, self.processor = self._load(self.model_id)
        self.device = next(self.model.parameters()).device
        self.dim = int(self._forward([_probe_image()]).shape[-1])

    def settings(self) -> dict:
        return {
            "model": self.model_id,
            "library": "transformers",
            "pool": self.pool,
            "dim": self.dim,
            "architecture": type(self.model).__name__,
        }

    def _load(self, model: str):
        from transformers import AutoImageProcessor, AutoModel

        how = (
            f"where the hub is unreachable, fetch it on a machine with internet "
            f"(`huggingface-cli download {model} --local-dir DIR`) and pass the folder: hf:DIR"
        )
        try:
            processor = AutoImageProcessor.from_pretrained(model)
            loaded = AutoModel.from_pretrained(model)
        except Exception as exc:  # OSError for missing files / no network, ValueError for unknown configs
            raise _weights_error(f"hf:{model}", exc, how) from exc
        return loaded.to(_device()).eval(), processor

    def _forward(self, images: list):
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device)
        if self.pool == "auto" and hasattr(self.model, "get_image_features"):
            features = self.model.get_image_features(pixel_values=pixels)
            return getattr(features, "pooler_output", features)
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        if self.pool in ("auto", "pooler") and pooled is not None:
            return pooled
        if self.pool == "pooler":
            raise MedisynError(f"{self.name}: the model has no pooled output (use #cls or #mean)")
        hidden = out.last_hidden_state
        return hidden[:, 0] if self.pool in ("auto", "cls") else hidden.mean(dim=1)


def _probe_image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (128, 128, 128))


# --- registry -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedderEntry:
    """One --embedder value: its factory (or "module:attr", imported on first use) and its help line."""

    name: str  # "pixel"; a prefix entry's word before the colon ("clip" for clip:<model>)
    factory: Callable[..., Embedder] | str  # prefix entries are called with the text after the colon
    help: str
    prefix: bool = False
    metavar: str = "<model>"  # what follows the colon, in help and error texts

    @property
    def spec(self) -> str:
        """How the value is written: pixel, clip:<model>."""
        return f"{self.name}:{self.metavar}" if self.prefix else self.name

    def make(self, argument: str | None = None) -> Embedder:
        """A new embedder (a prefix entry's `argument`: the text after the colon)."""
        factory = self.factory
        if isinstance(factory, str):
            from importlib import import_module

            module, _, attribute = factory.partition(":")
            factory = getattr(import_module(module), attribute)
        return factory(argument) if self.prefix else factory()


_EMBEDDERS: dict[str, EmbedderEntry] = {}  # by spec, in registration order
PLUGINS = "medisyn.embedders"  # the entry point group of other packages' embedders (core.plugins)


def register_embedder(
    name: str,
    factory: Callable[..., Embedder] | str,
    *,
    help: str,
    prefix: bool = False,
    metavar: str = "<model>",
    replace: bool = False,
) -> None:
    """Make `factory` the --embedder value `name` (`prefix`: `name:<anything>`, the rest passed to the factory);
    ValueError if the name is taken or not a plain word."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"embedder name {name!r}: must be a non-empty word (letters, digits, - _ .)")
    entry = EmbedderEntry(name, factory, " ".join(help.split()), prefix, metavar)
    if entry.spec in _EMBEDDERS and not replace:
        raise ValueError(f"embedder '{entry.spec}' is already registered")
    _EMBEDDERS[entry.spec] = entry


def unregister_embedder(spec: str) -> None:
    """Remove a registered embedder, by its spec ('toy', 'clip:<model>') (plug-ins and tests)."""
    _EMBEDDERS.pop(spec, None)


def _entries() -> dict[str, EmbedderEntry]:
    load_plugins(PLUGINS, _register_plugin)
    return _EMBEDDERS


def _register_plugin(name: str, factory) -> None:
    """An entry point's factory: its `help` attribute (else its docstring's first line), `prefix`, `metavar`."""
    doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
    register_embedder(
        name,
        factory,
        help=getattr(factory, "help", None) or (doc[0] if doc else f"plug-in {name}"),
        prefix=bool(getattr(factory, "prefix", False)),
        metavar=getattr(factory, "metavar", "<model>"),
    )


def embedder_names() -> tuple[str, ...]:
    """Every --embedder value as written (pixel, phash, clip:<model>, ...), plug-ins included."""
    return tuple(_entries())


def embedders_help() -> str:
    """One line per --embedder value, for --help."""
    return "\n".join(f"{entry.spec}: {entry.help}" for entry in _entries().values())


def find_embedder(spec: str) -> tuple[EmbedderEntry, str | None] | None:
    """(entry, argument) that `spec` names (argument: a prefix entry's text after the colon), or None; plug-ins are
    loaded only for a name medisyn's own embedders do not hold."""
    spec = (spec or "").strip()
    return _match(_EMBEDDERS, spec) or _match(_entries(), spec)


def _match(entries: dict[str, EmbedderEntry], spec: str) -> tuple[EmbedderEntry, str | None] | None:
    entry = entries.get(spec)
    if entry is not None and not entry.prefix:
        return entry, None
    word, colon, argument = spec.partition(":")
    prefixed = [e for e in entries.values() if e.prefix and e.name == word]
    return (prefixed[0], argument) if prefixed and colon and argument else None


def get_embedder(spec: str) -> Embedder:
    """A new embedder named by `spec` (pixel, phash, clip:<model>, ...); MedisynError listing the valid values."""
    found = find_embedder(spec)
    if found is None:
        raise MedisynError(
            f"unknown embedder '{(spec or '').strip()}' (valid: {', '.join(embedder_names())})"
        )
    entry, argument = found
    return entry.make(argument)


def _learned_needs_an_index() -> Embedder:
    raise MedisynError(
        "the learned embedder is trained on an index's own images: build one with `medisyn index "
        "build --embedder learned`, then pass that index (or learned:<index folder>)"
    )


register_embedder("pixel", PixelEmbedder, help="default, no weights: band-passed grey thumbnails (cosine)")
register_embedder("phash", PHashEmbedder, help="perceptual hash, 256 bits (Hamming): near-exact copies only")
register_embedder(
    "clip",
    ClipEmbedder,
    help="open_clip image tower (a folder, hf-hub:<org/repo> or <arch>/<tag>)",
    prefix=True,
)
register_embedder(
    "hf",
    HFEmbedder,
    help="transformers vision encoder (a folder or hub id; #cls or #mean pooling)",
    prefix=True,
)
register_embedder(
    "learned",
    _learned_needs_an_index,
    help="a copy descriptor trained by `index build` on the index's own images, saved in the index",
)
register_embedder(
    "learned",
    "medisyn_cli.screening.learned:load_embedder",  # imported on first use (torch)
    help="the learned descriptor saved in an index folder (e.g. for evaluate privacy)",
    prefix=True,
    metavar="<index folder>",
)
