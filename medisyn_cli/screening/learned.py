"""learned: an in-domain copy descriptor, a small CNN trained on the index's own images (issue #16).

`medisyn index build --embedder learned` trains it on the images it indexes, before embedding them, and saves it
in the index folder (learned.safetensors + learned.json); loading the index loads it. Training follows SSCD
(Pizzi et al. 2022, "A self-supervised descriptor for image copy detection"): two copy-style augmented views of
each image of a batch, InfoNCE over the 2B embeddings (the other view is the positive, every other embedding a
negative), plus the KoLeo entropy regulariser (-mean log distance to the nearest other embedding), which
spreads the descriptors so that distinct images stay far apart.

Augmentations (batched in torch, on 64 px grey images scaled to 0..1): one affine map per view -- crop keeping
50-100% of the side, padding (zoom out to 75%), rotation by up to 15 degrees, aspect squeeze -- then Gaussian
blur, gamma, brightness/contrast, noise, JPEG, text and marker overlays (a bank of masks drawn once with PIL),
and blends with other images of the set (weight 0.1-0.4). Quarter turns, flips and intensity inversion are
left to the query views (exact), so the small network spends nothing on them (`turns` > 0 trains them too).

The network sees a 32x32 grey thumbnail, standardised per image (brightness and contrast do not count): four
conv stages (16-32-64-128 channels), a linear head from the 4x4 feature map (layout kept; `head="gem"`: GeM
pooling) to DIM dimensions, L2-normalised. Queries are compared under the 8 flips / quarter turns and their
inversions (exact array ops, 16 forward passes); no region tiles and no refinement: crops are learned.
Similarity = (1 + cosine) / 2, so thresholds sit in (0, 1] like the other embedders' and the calibration range
of `medisyn index build` (0.90-0.995) reaches chance cosines of 0.8. Training time: `train` stats
(seconds_per_1k_images); benchmarks/screen_quality.py measures detection.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.screening.embed import DIHEDRAL, Embedder, View, to_grey

WEIGHTS_FILE, CONFIG_FILE = "learned.safetensors", "learned.json"
FORMAT = 1
VIEW_SET = "dihedral+invert"


@dataclass(frozen=True)
class LearnedConfig:
    """Everything that defines the network and its training (stored in learned.json)."""

    work: int = 64  # images are resampled to work x work (augmentations run at this size)
    size: int = 32  # network input side
    widths: tuple = (16, 32, 64, 128)
    dim: int = 128
    temperature: float = 0.05
    koleo: float = 1.0  # weight of the KoLeo term
    batch: int = 64  # images per step (2 views each)
    epochs: float = 60.0  # passes over the images ...
    min_steps: int = 600  # ... but at least this many steps (small sets) ...
    max_steps: int = 3000  # ... and at most this many (large sets: the time budget)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    head: str = "flat"  # "flat": linear map of the last feature map (keeps layout); "gem": GeM pooling
    turns: float = (
        0.0  # probability of a quarter turn / flip / inversion in training (query views cover them)
    )
    crop: float = 0.85  # crops keep at least this much of the side (pixel's region tiles catch deeper crops)
    zoom: float = 1.15  # zoom out (padding) up to this factor
    angle: float = 10.0  # rotations up to this many degrees
    blend: float = 0.4  # probability of a blend with another image of the set
    overlay: float = 0.4  # probability of a text / marker overlay

    def steps(self, count: int) -> int:
        """Training steps for `count` images."""
        return int(min(self.max_steps, max(self.min_steps, math.ceil(self.epochs * count / self.batch))))


# --- network --------------------------------------------------------------------------------------------


def build_network(config: LearnedConfig):
    """The CNN: conv stages (stride-2 conv + conv, BN, ReLU), GeM pooling, linear head."""
    import torch
    from torch import nn

    class GeM(nn.Module):
        def __init__(self, p: float = 3.0):
            super().__init__()
            self.p = nn.Parameter(torch.tensor(p))

        def forward(self, x):
            return x.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def unit(cin: int, cout: int, stride: int) -> list:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers, cin = unit(1, config.widths[0], 1), config.widths[0]
    for i, width in enumerate(config.widths[1:]):
        layers += unit(cin, width, 2) + (unit(width, width, 1) if i else [])
        cin = width
    if config.head == "gem":
        return nn.Sequential(*layers, GeM(), nn.Linear(cin, config.dim))
    side = config.size // 2 ** (len(config.widths) - 1)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * side * side, config.dim))


# --- images -> tensors ----------------------------------------------------------------------------------


def prepare(images: list, work: int) -> np.ndarray:
    """(N, work, work) float32 grey images scaled to 0..1 (min..max per image; flat images are 0)."""
    from PIL import Image

    out = np.zeros((len(images), work, work), np.float32)
    for n, image in enumerate(images):
        grey = Image.fromarray(to_grey(image), mode="F")
        if grey.size != (work, work):
            grey = grey.resize((work, work), Image.Resampling.BILINEAR, reducing_gap=None)
        array = np.asarray(grey, np.float32)
        low, high = float(array.min()), float(array.max())
        if high > low:
            out[n] = (array - low) / (high - low)
    return out


def _thumbnail(batch, size: int, theta=None):
    """(B, 1, size, size) samples of (B, 1, W, W) images through affine maps `theta` (None: identity)."""
    import torch.nn.functional as F

    if theta is None:
        return F.interpolate(batch, size=(size, size), mode="area")
    grid = F.affine_grid(theta, [len(batch), 1, size, size], align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def standardise(batch):
    """Per image: subtract the mean, divide by the standard deviation (flat images stay 0)."""
    mean = batch.mean(dim=(1, 2, 3), keepdim=True)
    std = batch.std(dim=(1, 2, 3), keepdim=True)
    return (batch - mean) / (std + 1e-3)


# --- augmentations --------------------------------------------------------------------------------------


def overlay_bank(work: int, count: int, seed: int) -> np.ndarray:
    """(count, work, work) masks of text, crosses, rectangles and lines drawn with PIL (values 0 / 1)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    masks = np.zeros((count, work, work), np.float32)
    words = ("L", "R", "L R 12", "AP", "PA", "x2", "5 cm", "ID 0413", "*", "T1", "LAT", "+")
    for n in range(count):
        canvas = Image.new("L", (work, work), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 4))):
            kind, x, y = rng.integers(4), int(rng.integers(0, work - 8)), int(rng.integers(0, work - 8))
            if kind == 0:
                draw.text((x, y), str(rng.choice(words)), fill=255)
            elif kind == 1:
                r = int(rng.integers(3, 8))
                draw.line((x - r, y, x + r, y), fill=255)
                draw.line((x, y - r, x, y + r), fill=255)
            elif kind == 2:
                draw.rectangle(
                    (x, y, x + int(rng.integers(4, 16)), y + int(rng.integers(3, 10))), outline=255
                )
            else:
                draw.line((x, y, int(rng.integers(0, work)), int(rng.integers(0, work))), fill=255)
        masks[n] = np.asarray(canvas, np.float32) / 255.0
    return masks


class Augmenter:
    """Copy-style views of a batch of (B, 1, work, work) images in 0..1, as standardised network inputs."""

    def __init__(self, config: LearnedConfig, generator):
        import torch

        self.config, self.g = config, generator
        self.masks = torch.from_numpy(overlay_bank(config.work, 64, config.seed))[:, None]

    def _u(self, n: int, low: float, high: float):
        import torch

        return low + (high - low) * torch.rand(n, generator=self.g)

    def _p(self, n: int, p: float):
        import torch

        return torch.rand(n, generator=self.g) < p

    def geometry(self, n: int):
        """(n, 2, 3) affine maps (output -> input coordinates): crop / zoom out, squeeze, rotation, turns, flips."""
        import torch

        c = self.config
        scale = torch.where(
            self._p(n, 0.7), self._u(n, c.crop, 1.0), self._u(n, 1.0, c.zoom)
        )  # crop .. zoom out
        scale = torch.where(self._p(n, 0.3), torch.ones(n), scale)
        aspect = torch.where(self._p(n, 0.2), self._u(n, 0.85, 1.18), torch.ones(n))
        angle = torch.where(self._p(n, 0.4), self._u(n, -c.angle, c.angle), torch.zeros(n)) * math.pi / 180
        angle = (
            angle
            + (math.pi / 2)
            * torch.where(
                self._p(n, self.config.turns),
                torch.randint(1, 4, (n,), generator=self.g),
                torch.zeros(n, dtype=torch.long),
            ).float()
        )
        flip = torch.where(self._p(n, self.config.turns), -torch.ones(n), torch.ones(n))
        sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
        room_x, room_y = (1 - sx).clamp(min=0), (1 - sy).clamp(min=0)
        tx, ty = self._u(n, -1, 1) * room_x, self._u(n, -1, 1) * room_y
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * sx * flip, -sin * sy, tx
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * sx * flip, cos * sy, ty
        return theta

    def __call__(self, batch):
        """(B, 1, size, size) standardised augmented thumbnails of a (B, 1, work, work) batch."""
        import torch

        n = len(batch)
        x = batch
        blend = self._p(n, self.config.blend)
        if blend.any():  # a blend with another image of the set (the dominant one stays the positive)
            weight = torch.where(blend, self._u(n, 0.1, 0.4), torch.zeros(n))[:, None, None, None]
            other = (
                batch[torch.roll(torch.arange(n), 1 + int(torch.randint(n - 1, (1,), generator=self.g)))]
                if n > 1
                else batch
            )
            x = (1 - weight) * x + weight * other
        x = self._photometric(x)
        x = self._overlay(x)
        x = _thumbnail(x, self.config.size, self.geometry(n))
        x = self._blur(x)
        x = x + torch.where(self._p(n, 0.2), self._u(n, 0.0, 0.05), torch.zeros(n))[
            :, None, None, None
        ] * torch.randn(x.shape, generator=self.g)
        x = self._jpeg(x)
        return standardise(x)

    def _photometric(self, x):
        """Gamma, brightness / contrast and intensity inversion."""
        import torch

        n = len(x)
        gamma = torch.where(self._p(n, 0.4), torch.exp(self._u(n, -0.7, 0.7)), torch.ones(n))[
            :, None, None, None
        ]
        x = x.clamp(0, 1) ** gamma
        x = x * self._u(n, 0.7, 1.3)[:, None, None, None] + self._u(n, -0.2, 0.2)[:, None, None, None]
        invert = self._p(n, self.config.turns / 2)[:, None, None, None]
        return torch.where(invert, 1 - x, x)

    def _overlay(self, x):
        """Text and markers in white or black on a third of the views."""
        import torch

        n = len(x)
        chosen = self.masks[torch.randint(len(self.masks), (n,), generator=self.g)]
        on = self._p(n, self.config.overlay)[:, None, None, None] * chosen
        value = torch.where(self._p(n, 0.7), x.amax(dim=(1, 2, 3)), x.amin(dim=(1, 2, 3)))[
            :, None, None, None
        ]
        return x * (1 - on) + value * on

    def _blur(self, x):
        """Gaussian blur, sigma 0.3-1.5 thumbnail pixels (0.6-3 image pixels), on a third of the views."""
        import torch
        import torch.nn.functional as F

        n = len(x)
        sigma = torch.where(self._p(n, 0.3), self._u(n, 0.3, 1.5), torch.full((n,), 0.01))
        taps = torch.arange(-3, 4, dtype=torch.float32)
        kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        padded = F.pad(x.transpose(0, 1), (3, 3, 3, 3), mode="replicate")  # (1, B, H, W): one group per image
        rows = F.conv2d(padded, kernel[:, None, None, :], groups=n)
        return F.conv2d(rows, kernel[:, None, :, None], groups=n).transpose(0, 1)

    def _jpeg(self, x):
        """JPEG at quality 20-80 on a fifth of the views (PIL's encoder, 8-bit)."""
        import io

        import torch
        from PIL import Image

        chosen = torch.nonzero(self._p(len(x), 0.2)).ravel().tolist()
        if not chosen:
            return x
        qualities = torch.randint(20, 81, (len(chosen),), generator=self.g).tolist()
        out = x.clone()
        for i, quality in zip(chosen, qualities):
            low, high = float(x[i].min()), float(x[i].max())
            span = high - low if high > low else 1.0
            pixels = ((x[i, 0] - low) / span * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buffer, "JPEG", quality=int(quality))
            decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32)
            out[i, 0] = torch.from_numpy(decoded) / 255 * span + low
        return out


# --- training -------------------------------------------------------------------------------------------


def sscd_loss(z, temperature: float, koleo: float):
    """(total, infonce, koleo) for (2B, D) L2-normalised embeddings: rows i and i + B are two views of one image."""
    import torch
    import torch.nn.functional as F

    n = len(z) // 2
    sims = z @ z.T / temperature
    sims = sims.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    infonce = F.cross_entropy(sims, target)
    with torch.no_grad():
        cosine = z @ z.T
        cosine.fill_diagonal_(-2.0)
        cosine[torch.arange(n), torch.arange(n, 2 * n)] = -2.0  # the nearest *other* image
        cosine[torch.arange(n, 2 * n), torch.arange(n)] = -2.0
        nearest = cosine.argmax(dim=1)
    distance = (z - z[nearest]).norm(dim=1)
    entropy = -torch.log(distance + 1e-8).mean()
    return infonce + koleo * entropy, infonce, entropy


def train(images, config: LearnedConfig | None = None, steps: int | None = None, log=None) -> tuple:
    """(network in eval mode, stats) trained with the SSCD recipe on `images` (PIL images, or an array from
    `prepare`); deterministic given the config's seed."""
    import torch

    config = config or LearnedConfig()
    if len(images) < 2:
        raise MedisynError(f"the learned embedder needs at least 2 training images, got {len(images)}")
    clock = time.time()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    prepared = images if isinstance(images, np.ndarray) else prepare(images, config.work)
    base = torch.from_numpy(np.ascontiguousarray(prepared, dtype=np.float32))[:, None]
    network = build_network(config)
    steps = config.steps(len(images)) if steps is None else int(steps)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=max(steps, 1), pct_start=0.1
    )
    augment, batch, losses = Augmenter(config, generator), min(config.batch, len(images)), []
    network.train()
    order, position = torch.randperm(len(images), generator=generator), 0
    for step in range(steps):
        if position + batch > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        chosen = base[order[position : position + batch]]
        position += batch
        views = torch.cat([augment(chosen), augment(chosen)])
        z = torch.nn.functional.normalize(network(views), dim=1)
        total, infonce, entropy = sscd_loss(z, config.temperature, config.koleo)
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        schedule.step()
        losses.append((total.item(), infonce.item(), entropy.item()))
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(step, steps, losses[-1])
    network.eval()
    seconds = time.time() - clock
    head = np.mean([l[0] for l in losses[: max(1, min(20, len(losses) // 5))]]) if losses else float("nan")
    tail = np.mean([l[0] for l in losses[-max(1, min(20, len(losses) // 5)) :]]) if losses else float("nan")
    return network, {
        "images": len(images),
        "steps": steps,
        "batch": batch,
        "seconds": round(seconds, 1),
        "seconds_per_1k_images": round(1000 * seconds / len(images), 1),
        "loss_first": round(float(head), 4),
        "loss_last": round(float(tail), 4),
        "infonce_last": round(float(losses[-1][1]), 4) if losses else None,
    }


# --- the embedder ---------------------------------------------------------------------------------------


class LearnedEmbedder(Embedder):
    """The trained CNN as an Embedder: 'learned', loaded from (and saved to) an index folder."""

    binary = False
    calibrated_default = False  # calibrated per index at build time (screen.calibrate)

    def __init__(self, network, config: LearnedConfig, training: dict | None = None, digest: str = ""):
        self.name, self.network, self.config = "learned", network, config
        self.dim, self.training, self.digest = config.dim, training or {}, digest
        self.default_threshold = DEFAULT_THRESHOLD

    def settings(self) -> dict:
        return {
            "format": FORMAT,
            "config": _config_json(self.config),
            "weights_sha256": self.digest,
            "views": VIEW_SET,
            "similarity": "(1 + cosine) / 2",
        }

    def _embed(self, images: list) -> np.ndarray:
        return self._forward(prepare(images, self.config.work))

    def _forward(self, base: np.ndarray, chunk: int = 512) -> np.ndarray:
        """L2-normalised descriptors of (N, work, work) prepared images."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(base), chunk):
                batch = torch.from_numpy(np.ascontiguousarray(base[start : start + chunk]))[:, None]
                x = standardise(_thumbnail(batch, self.config.size))
                out.append(torch.nn.functional.normalize(self.network(x), dim=1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def embed_views(self, images: list, views) -> np.ndarray:
        """(N, V, dim): turns, flips and inversions as exact array ops; other views through apply_view."""
        views = tuple(views)
        if not images:
            return np.zeros((0, len(views), self.dim), np.float32)
        if not all(v.box == (0.0, 0.0, 1.0, 1.0) and not v.angle for v in views):
            return super().embed_views(images, views)
        base = prepare(images, self.config.work)
        stack = np.stack([_dihedral(base, view) for view in views], axis=1)  # (N, V, work, work)
        flat = self._forward(stack.reshape(-1, self.config.work, self.config.work))
        return flat.reshape(len(images), len(views), self.dim)

    def default_views(self, view_set: str = "general") -> tuple:
        """The 8 flips / quarter turns and their intensity inversions (every view set)."""
        return VIEWS

    def region_views(self) -> tuple:
        """None: the descriptor is trained on crops down to half the side (no region tiles needed)."""
        return ()

    def similarity_from_distance(self, distances: np.ndarray) -> np.ndarray:
        """Inner product (cosine) -> (1 + cosine) / 2."""
        return (1.0 + np.asarray(distances, dtype=np.float32)) / 2.0

    def index_record(self) -> dict:
        """What index.json records about the descriptor: its files and how it was trained."""
        return {
            "learned": {
                "weights": WEIGHTS_FILE,
                "config": CONFIG_FILE,
                "weights_sha256": self.digest,
                "training": self.training,
            }
        }

    def save(self, folder: Path) -> None:
        """learned.safetensors and learned.json in `folder` (temporary names, then renamed)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file({k: v.detach().contiguous() for k, v in self.network.state_dict().items()}, str(tmp))
        self.digest = _sha256(tmp)
        meta = {
            "format": FORMAT,
            "config": _config_json(self.config),
            "weights_sha256": self.digest,
            "training": self.training,
        }
        (folder / (CONFIG_FILE + ".tmp")).write_text(json.dumps(meta, indent=1) + "\n")
        tmp.replace(folder / WEIGHTS_FILE)
        (folder / (CONFIG_FILE + ".tmp")).replace(folder / CONFIG_FILE)


DEFAULT_THRESHOLD = 0.95  # a guess (cosine 0.9): `medisyn index build` calibrates every learned index
VIEWS = tuple(DIHEDRAL) + tuple(View(v.flip, v.box, v.penalty, v.turn, v.angle, True) for v in DIHEDRAL)


def _dihedral(base: np.ndarray, view) -> np.ndarray:
    """(N, W, W) prepared images under a turn / flip / inversion view (same orientation as embed.apply_view)."""
    out = np.rot90(base, view.turn % 4, axes=(1, 2)) if view.turn % 4 else base
    out = 1.0 - out if view.invert else out
    if view.flip == "h":
        out = out[:, :, ::-1]
    elif view.flip == "v":
        out = out[:, ::-1, :]
    return np.ascontiguousarray(out, dtype=np.float32)


def _config_json(config: LearnedConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_embedder(
    images: list,
    folder: Path | None = None,
    config: LearnedConfig | None = None,
    steps: int | None = None,
    log=None,
) -> LearnedEmbedder:
    """Train on `images` and, with a `folder`, save the weights and config there."""
    network, stats = train(images, config, steps, log)
    embedder = LearnedEmbedder(network, config or LearnedConfig(), stats)
    if folder is not None:
        embedder.save(Path(folder))
    return embedder


TRAIN_MAX = 20_000  # images an index's descriptor is trained on at most (a seeded sample of larger sets)
TRAINING = LearnedConfig()  # what `index build --embedder learned` trains


def untrained() -> LearnedEmbedder:
    """The embedder before training: what `index build --embedder learned` checks its options against."""
    return LearnedEmbedder(None, LearnedConfig())


def held_out(count: int, sample: int = 200, minimum: int = 50) -> np.ndarray:
    """Positions the threshold calibration of `index build` screens (index_write._calibrate's seeded rule, with
    calibrate.CALIBRATION_SAMPLE / CALIBRATION_MIN): kept out of training, so the calibration sees images the
    descriptor never learned to tell apart -- like a generated image. A descriptor calibrated on its own training
    images is over-confident (benchmarks/results/screen_quality/learned: 16% false positives on new images)."""
    if count < minimum:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng(2).choice(count, size=min(sample, count), replace=False))


def fit_for_index(
    records: list, folder: Path, show_progress: bool = False, config: LearnedConfig | None = None
) -> LearnedEmbedder:
    """Train on the images of an index being built (`records`: objects with .open(); above 400 images the
    calibration sample (`held_out`) left out; a seeded sample of TRAIN_MAX at most) and save the descriptor in
    `folder`; unreadable images are left out (the embedding pass reports them)."""
    import sys

    config = config or TRAINING
    calibration = (
        set(held_out(len(records)).tolist()) if len(records) > 400 else set()
    )  # small sets: train on all
    records = [record for i, record in enumerate(records) if i not in calibration]
    log = (
        (
            lambda step, steps, loss: print(
                f"training the learned descriptor: step {step + 1}/{steps}, loss {loss[0]:.3f}",
                file=sys.stderr,
                flush=True,
            )
        )
        if show_progress
        else None
    )
    chosen = (
        np.arange(len(records))
        if len(records) <= TRAIN_MAX
        else np.sort(np.random.default_rng(config.seed).choice(len(records), TRAIN_MAX, replace=False))
    )
    prepared, clock = np.zeros((len(chosen), config.work, config.work), np.float32), time.time()
    kept = 0
    for i in chosen:
        try:
            prepared[kept] = prepare([records[int(i)].open()], config.work)[0]
        except (
            Exception
        ):  # PIL raises many types for corrupt files; the embedding pass reports them as skipped
            continue
        kept += 1
    network, stats = train(prepared[:kept], config, log=log)
    stats.update(read_seconds=round(time.time() - clock - stats["seconds"], 1), held_out=len(calibration))
    embedder = LearnedEmbedder(network, config, stats)
    embedder.save(Path(folder))
    return embedder


def load_embedder(folder: str | Path) -> LearnedEmbedder:
    """The learned embedder saved in an index folder; MedisynError (one line) when missing or corrupt."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    how = "rebuild the index with `medisyn index build --embedder learned`"
    for path in (config_path, weights):
        if not path.is_file():
            raise MedisynError(
                f"{path}: missing (the learned embedder's {'weights' if path == weights else 'config'}); "
                f"{how}"
            )
    try:
        meta = json.loads(config_path.read_text())
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
        config = LearnedConfig(**fields)
        network = build_network(config)
        network.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as exc:  # JSON, missing keys, wrong shapes, a truncated safetensors file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MedisynError(
            f"{folder}: cannot load the learned embedder ({type(exc).__name__}: {first}); {how}"
        ) from exc
    digest = _sha256(weights)
    if meta.get("weights_sha256") and meta["weights_sha256"] != digest:
        raise MedisynError(
            f"{weights}: sha256 {digest[:12]}... differs from {CONFIG_FILE} "
            f"({meta['weights_sha256'][:12]}...); {how}"
        )
    return LearnedEmbedder(network.eval(), config, meta.get("training"), digest)
