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

Query-time views (`Embedder.default_views`): a copy made by a memorising model may be flipped, shifted or
cropped. The screener embeds each query under several views (flips, and for `pixel` a grid of shifts and
zooms) and keeps the best match, so a flipped or slightly cropped copy still matches its source.

Default thresholds (`default_threshold`) were calibrated with benchmarks/screen_quality.py on the 6,754 real
64x64 images of the shared sample data; see CALIBRATION below and benchmarks/results/screen_quality.txt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MedisynError

CALIBRATION = """\
filled in from benchmarks/results/screen_quality.txt
"""


@dataclass(frozen=True)
class View:
    """A query-time view: an optional flip, then the box of the query that holds the source's full frame.

    `box` is (left, top, right, bottom) as fractions of the query's width and height; (0, 0, 1, 1) is the
    query as it is. A copy shifted right by 5% is undone by box (0.05, 0, 1.05, 1); a 90% crop by a box
    larger than the query, e.g. (-0.05, -0.05, 1.06, 1.06).
    """

    flip: str = ""  # "", "h" (left-right) or "v" (top-bottom)
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    @property
    def name(self) -> str:
        """Short label for reports, e.g. 'hflip' or 'box(0.05,0.00,1.05,1.00)'."""
        if self.box == (0.0, 0.0, 1.0, 1.0):
            return {"": "identity", "h": "hflip", "v": "vflip"}[self.flip]
        return (self.flip + "flip+" if self.flip else "") + "box(" + ",".join(f"{v:.2f}" for v in self.box) + ")"


IDENTITY = View()
FLIPS = (IDENTITY, View("h"), View("v"))


# --- image modes ----------------------------------------------------------------------------------------

def to_grey(image) -> np.ndarray:
    """Luminance of any PIL image as float32 (H, W), keeping 16-bit and float precision (never clipped)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "L", "1"):
        return np.asarray(image, dtype=np.float32)
    if image.mode == "LA" or image.mode == "P" and "transparency" in image.info or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        rgba = np.asarray(image, dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)  # composite over black
    else:
        rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_8bit(image):
    """An 'L' or 'RGB' PIL image for models and hashes; 16-bit and float images are rescaled (min..max -> 0..255)."""
    from PIL import Image

    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        grey = to_grey(image)
        low, high = float(grey.min()), float(grey.max())
        scaled = (grey - low) * (255.0 / (high - low)) if high > low else np.zeros_like(grey)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("LA", "RGBA", "PA") or image.mode == "P" and "transparency" in image.info:
        return Image.fromarray(np.round(to_grey(image) if image.mode == "LA" else _over_black(image)).astype(np.uint8))
    return image.convert("RGB")


def _over_black(image) -> np.ndarray:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    return rgba[..., :3] * (rgba[..., 3:] / 255.0)


def apply_view(image, view: View):
    """The query under a view, as a PIL image (frame outside the query is filled by edge replication)."""
    from PIL import Image, ImageOps

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

    def settings(self) -> dict:
        """Everything that changes the vectors; stored in index.json and compared when an index is loaded."""
        return {}

    def embed(self, images: list) -> np.ndarray:
        """(N, dim) float32 L2-normalised vectors, or (N, dim // 8) uint8 packed bits for binary embedders."""
        if not images:
            return np.zeros((0, self.code_size), dtype=np.uint8 if self.binary else np.float32)
        return self._embed(images)

    def embed_views(self, images: list, views: tuple[View, ...] | list[View]) -> np.ndarray:
        """(N, V, ...) embeddings of every image under every view (views in the order given)."""
        flat = self.embed([apply_view(image, view) for image in images for view in views])
        return flat.reshape(len(images), len(views), -1)

    def default_views(self) -> tuple[View, ...]:
        """Views the screener tries for each query: identity first, then flips (subclasses may add more)."""
        return FLIPS

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
            raise MedisynError(f"threshold {threshold} is outside (0, 1]: similarities of '{self.name}' are "
                               f"{'1 - hamming/bits' if self.binary else 'cosine'}, 1.0 meaning identical "
                               f"(default {self.default_threshold})")
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

def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) row-normalised Gaussian blur with reflected borders; identity for sigma 0."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    rows = np.arange(n)
    matrix = np.zeros((n, n), dtype=np.float64)
    for offset in range(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1):
        cols = np.abs(rows + offset)
        cols = np.where(cols > n - 1, 2 * (n - 1) - cols, cols)
        np.add.at(matrix, (rows, cols), math.exp(-offset * offset / (2 * sigma * sigma)))
    return (matrix / matrix.sum(axis=1, keepdims=True)).astype(np.float32)


class PixelEmbedder(Embedder):
    """Grey thumbnail of the central window, band-passed, standardised and L2-normalised (no weights).

    Steps: luminance (16-bit and float kept exact) -> the central `window` of the frame resized to
    size x size (antialiased bilinear) -> difference of Gaussians (sigma `blur` minus sigma `background`,
    in thumbnail pixels) which removes the anatomy every image of a class shares -> subtract the mean,
    divide by the norm. Cosine similarity is then the normalised correlation of the two band-passed images:
    invariant to brightness and contrast, tolerant of resizing, JPEG and noise. Using the central window
    leaves room for the shift and zoom views that catch shifted and cropped copies.
    """

    def __init__(self, size: int = 32, window: float = 0.8, blur: float = 1.0, background: float = 4.0):
        self.name, self.size, self.window, self.blur, self.background = "pixel", size, window, blur, background
        self.dim = size * size
        self.default_threshold = PIXEL_THRESHOLD
        self._low, self._high = _gaussian_matrix(size, blur), _gaussian_matrix(size, background)

    def settings(self) -> dict:
        return {"size": self.size, "window": self.window, "blur": self.blur, "background": self.background,
                "grey": "luminance 0.299/0.587/0.114, alpha over black", "resample": "bilinear"}

    def _embed(self, images: list) -> np.ndarray:
        return self.embed_views(images, (IDENTITY,))[:, 0]

    def embed_views(self, images: list, views: tuple[View, ...] | list[View]) -> np.ndarray:
        thumbs = np.stack([self._thumb(grey, view) for grey in map(_float_image, images) for view in views])
        return self._describe(thumbs).reshape(len(images), len(views), self.dim)

    def _thumb(self, grey, view: View) -> np.ndarray:
        """The central window of the view's frame, resized to size x size."""
        from PIL import Image

        if view.flip:
            grey = grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT if view.flip == "h" else Image.Transpose.FLIP_TOP_BOTTOM)
        width, height = grey.size
        left, top, right, bottom = view.box
        margin = (1.0 - self.window) / 2
        box = [left + (right - left) * margin, top + (bottom - top) * margin,
               right - (right - left) * margin, bottom - (bottom - top) * margin]
        box = (max(0.0, box[0]) * width, max(0.0, box[1]) * height, min(1.0, box[2]) * width, min(1.0, box[3]) * height)
        return np.asarray(grey.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box), dtype=np.float32)

    def _describe(self, thumbs: np.ndarray) -> np.ndarray:
        band = self._low @ thumbs @ self._low.T
        if self.background > 0:
            band = band - self._high @ thumbs @ self._high.T
        flat = band.reshape(len(thumbs), -1)
        return l2_normalise(flat - flat.mean(axis=1, keepdims=True))

    def default_views(self) -> tuple[View, ...]:
        """Identity, flips, shifts up to 5% of the frame and crops down to 90% (see pixel_views)."""
        return FLIPS + pixel_views(self.size, self.window)


def pixel_views(size: int, window: float, shift: float = 0.05, crops: tuple[float, ...] = (0.9,)) -> tuple[View, ...]:
    """Shift views (source frame moved by up to `shift`) and crop views (query = a `crop` fraction of the source,
    any offset), on a grid of one thumbnail pixel."""
    views = []
    for crop in (1.0,) + tuple(crops):
        side = 1.0 / crop  # the source frame's side in query units
        low, high = (-shift, shift) if crop == 1.0 else (1.0 - side, 0.0)  # where the frame's left/top edge may be
        count = int(round((high - low) / (window / size * side))) + 1
        for top in np.linspace(low, high, count):
            for left in np.linspace(low, high, count):
                if crop == 1.0 and abs(left) < 1e-9 and abs(top) < 1e-9:
                    continue
                box = (left, top, left + side, top + side)
                views.append(View("", tuple(round(float(v), 6) for v in box)))
    return tuple(views)


def _float_image(image):
    """Any PIL image -> mode 'F' luminance (keeps 16-bit precision)."""
    from PIL import Image

    return Image.fromarray(to_grey(image), mode="F")


# --- phash ----------------------------------------------------------------------------------------------

class PHashEmbedder(Embedder):
    """Perceptual hash (DCT of a grey thumbnail, imagehash.phash): hash_size**2 bits packed into bytes."""

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
    """Shared parts of the neural embedders: device choice, batching through `_forward`, normalisation."""

    default_threshold = MODEL_THRESHOLD = 0.95

    def _embed(self, images: list) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self._forward([to_8bit(image).convert("RGB") for image in images])
        return l2_normalise(features.float().cpu().numpy())

    def _forward(self, images: list):
        raise NotImplementedError


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _weights_error(spec: str, exc: Exception, how: str) -> MedisynError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MedisynError(f"{spec}: cannot load the model ({first[:200]}); {how}")


class ClipEmbedder(TorchEmbedder):
    """open_clip image tower: clip:<folder> | clip:hf-hub:<org/repo> | clip:<arch>/<tag or checkpoint file>."""

    def __init__(self, model: str):
        self.model_id, self.name = model, f"clip:{model}"
        self.model, self.preprocess = self._load(model)
        self.device = next(self.model.parameters()).device
        self.dim = int(self.model.visual.output_dim)

    def settings(self) -> dict:
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        return {"model": self.model_id, "library": "open_clip", "dim": self.dim,
                "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}

    def _load(self, model: str):
        import open_clip

        how = ("without internet, download the weights elsewhere (e.g. `huggingface-cli download <org/repo>`) "
               "and pass the folder: clip:/path/to/folder (with open_clip_config.json)")
        if Path(model).is_dir():
            name, pretrained = f"local-dir:{Path(model)}", None
        elif model.startswith("hf-hub:"):
            name, pretrained = model, None
        elif "/" in model:
            name, pretrained = model.split("/", 1)
            if name not in open_clip.list_models():
                raise MedisynError(f"clip:{model}: unknown open_clip architecture '{name}' "
                                   f"(e.g. ViT-B-32, ViT-B-16, ViT-L-14; see open_clip.list_models())")
        else:
            raise MedisynError(f"clip:{model}: give weights: clip:<folder>, clip:hf-hub:<org/repo>, or "
                               f"clip:<arch>/<pretrained tag or checkpoint file>, e.g. clip:ViT-B-32/laion2b_s34b_b79k")
        try:
            loaded, preprocess = open_clip.create_model_from_pretrained(name, pretrained=pretrained, device=_device())
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
            raise MedisynError(f"hf:{model}: unknown pooling '#{self.pool}' (valid: {', '.join(self.POOLING)})")
        self.model, self.processor = self._load(self.model_id)
        self.device = next(self.model.parameters()).device
        self.dim = int(self._forward([_probe_image()]).shape[-1])

    def settings(self) -> dict:
        return {"model": self.model_id, "library": "transformers", "pool": self.pool, "dim": self.dim,
                "architecture": type(self.model).__name__}

    def _load(self, model: str):
        from transformers import AutoImageProcessor, AutoModel

        how = ("without internet, download it elsewhere (`huggingface-cli download <id> --local-dir DIR`) and "
               "pass the folder: hf:DIR")
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

PIXEL_THRESHOLD = 0.9
PHASH_THRESHOLD = 0.85
MODEL_THRESHOLD = TorchEmbedder.MODEL_THRESHOLD
EMBEDDERS = {"pixel": PixelEmbedder, "phash": PHashEmbedder}
FAMILIES = {"clip:": ClipEmbedder, "hf:": HFEmbedder}
SPECS = ("pixel", "phash", "clip:<model>", "hf:<model>")


def get_embedder(spec: str) -> Embedder:
    """The embedder named by `spec`: pixel, phash, clip:<model> or hf:<model> (see the module docstring)."""
    spec = (spec or "").strip()
    if spec in EMBEDDERS:
        return EMBEDDERS[spec]()
    for prefix, family in FAMILIES.items():
        if spec.startswith(prefix) and len(spec) > len(prefix):
            return family(spec[len(prefix):])
    raise MedisynError(f"unknown embedder '{spec}' (valid: {', '.join(SPECS)})")
