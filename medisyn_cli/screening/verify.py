"""Local-feature verification of near-copy candidates: invariant to affine changes, crops, borders and pasted regions
by construction, not by a list of query views.

Every training image's SIFT keypoints (positions and descriptors, on a WORK_SIDE grey copy) are kept in the index
folder (`local.npz`). A query's keypoints are matched with those of its candidates (the whole-image and region
searches' best, plus the training images its own descriptors vote for in a search of all stored descriptors, so a
region pasted into another image still becomes a candidate), and a RANSAC affine model counts the matches that one
geometric transform explains (inliers). A query keeps its strongest keypoints cell by cell (the 2 strongest of each
of 8 x 8 cells first, then the strongest of the rest): a noisy or busy part of it (a noise border, the image a region
was pasted into, an overlay) would otherwise hold every keypoint and leave the copied part none. Intensity inversion
and mirroring permute a SIFT descriptor's bins, so the query is matched under all four at no extra detection cost.

Inliers alone do not tell a copy from a look-alike: two chest x-rays of different children share 30-40 inliers
(ribs, clavicles and the heart border line up under one affine map). So the training image is then warped onto the
query with that model and compared where the inliers are (their convex hull): in every 8x8 block of it, the squared
correlation of the two images (a local linear fit, so any contrast, gamma or inversion change keeps it near 1).
Keypoints fix the map to a pixel or two, which a fine texture cannot absorb, so where the agreement is not already
clear the map is refined by ECC (OpenCV's enhanced-correlation alignment, started from the RANSAC model, over the
training image's part the inliers cover) and the better of the two agreements counts; where no affine map lays the
two on each other well enough (a copy seen in perspective), ECC refines the map to a homography too; where neither
does (an elastic deformation: a smooth field of small displacements), a dense optical flow from the aligned image to
the query, smoothed and capped, moves it on, and the fine detail (each image less its blur) must then agree in nearly
every block: a look-alike's outlines can be moved onto the query, its texture cannot. Noise the query has beyond its
candidate (a noisy copy) is explained by no fit: its variance, estimated where both images are flattest, is taken out
of the query's before the correlation is read (a correction for attenuation). A colour query whose luma is not its
main colour axis (a false-colour copy of a grey image: a colour map's luma is not monotone in the grey level) is
matched again as its principal-component grey copy where its luma verifies nothing.
A copy -- rotated, sheared, cropped, bordered, pasted into another image -- agrees in most blocks; a look-alike
agrees in its outlines but not in its texture. A candidate is verified when its median block agreement is at least
AGREEMENT, or when its fine detail shows in the query's at one gain in nearly every block (`_detail_agreement`): a
blend with an image the index does not hold explains only its share of each block, but its texture is there, at the
blend's weight everywhere, where a look-alike's is not and its gains scatter. The training images' grey thumbnails
(THUMB_SIDE) are kept in local.npz for this.

    local = LocalFeatures.from_images(images)          # at index build
    verifier = Verifier(local)
    inliers, ids = verifier.score(query_images, candidates)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import noise_variance, to_8bit
from medisyn_cli.screening.embed import blas_threads

LOCAL_FILE = "local.npz"
WORK_SIDE = 128  # images are compared as WORK_SIDE x WORK_SIDE grey copies (SIFT doubles it internally)
QUERY_KEYPOINTS, STORED_KEYPOINTS = 200, 128  # strongest keypoints kept per query / per training image
CONTRAST = 0.005  # SIFT contrast threshold: low, so smooth images (dermoscopy) still have keypoints
RATIO = 0.8  # Lowe's ratio test on RootSIFT distances
RANSAC_PIXELS = 3.0  # reprojection error of an inlier, in WORK_SIDE pixels
VOTED = 6  # training images a query's descriptors vote for that are verified besides the search's candidates
PROJECTED = 32  # dimensions of the descriptor search (PCA of RootSIFT)
MIN_INLIERS = 8  # fewest inliers an affine model needs to count at all
# a query's keypoints (`_keypoints`): the SPREAD_QUOTA strongest of each of SPREAD_GRID x SPREAD_GRID cells first
SPREAD_GRID, SPREAD_QUOTA = 8, 2
# least share of the image the inliers' convex hull must cover, in the query or in the training image (the larger):
# burned-in text and scanner marks shared by distinct images of one device match in a small patch; a copied region
# (a third of the training image or more) spans more, though its inliers' hull covers only part of it, and less of
# the query where it was pasted smaller (a third of the area at 0.7 times the side: the hull 5-10% of the query)
MIN_SPREAD = 0.05
# inliers that make a verified candidate a near-copy where the index has no calibrated value (fewer than
# calibrate.CALIBRATION_MIN images: two distinct chest x-rays can share 12), and the least a calibrated value may be
VERIFY_DEFAULT, VERIFY_FLOOR = 20, 12
THUMB_SIDE = 64  # training images' grey thumbnails kept for the dense check (upsampled to WORK_SIDE)
BLOCK = 8  # side of the blocks the dense check correlates, in WORK_SIDE pixels
# least median squared block correlation of a verified copy (the better of the RANSAC and the ECC-refined map): the
# six data sets' copies under random affine, crop, border and paste edits reach it in 88-100% of cases per family
# (most 0.95-1.0), distinct images (chest x-rays, hands of different children) in < 0.3%
AGREEMENT = 0.9
# between these agreements the RANSAC model is refined by ECC (ECC_ITERATIONS) and the better agreement kept: a copy
# aligned to a pixel agrees 0.95-1.0, and 70 of the 71 copies refining rescued agreed 0.6 or more before; refining
# costs ~2 ms per candidate, so a clear copy and a clear non-copy skip it
REFINE_FROM, REFINE_BELOW, ECC_ITERATIONS = 0.6, 0.95, 50
# least agreement of the candidate a blend is explained from (its larger share alone explains more than this)
PAIR_FROM = 0.4
# partners of a blend found by scanning every thumbnail in register (`Verifier.in_register`): how many are tried,
# the largest index scanned, and the side of the scanned copies (kept in memory as float32: 8 KB an image)
SCANNED, SCAN_LIMIT, SCAN_SIDE = 4, 20_000, 32
# least agreement of a blend explained in register over the whole image (`Verifier.registered`): blends of two
# unmoved training images 0.97-1.0 on blood smears and MedNIST, the best pair for a non-indexed image there <= 0.76
REGISTERED = 0.95
# ... tried only with partners that explain more than this share of what the first image leaves (the scan's score,
# over the whole image): such blends' partners 0.93-1.0, the best for non-indexed images of four data sets <= 0.63
REGISTERED_SHARE = 0.8
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
NO_MATCH = (0, None, np.zeros((0, 2), np.float32))  # a `match` without a valid model
# per-pixel variance at WORK_SIDE of white noise added to a 64 px image, per unit of `_noise`'s estimate (medians
# 1.7-2.1 on five data sets, sigma 4-16; the lower end: the discount errs on the small side)
NOISE_GAIN = 1.7
# the least share of a block's variance kept as signal when the noise is taken out (a noise estimate too large for a
# weakly textured block must not turn its correlation into 1)
KEPT = 0.5
# an elastic deformation (`_deformed`): the displacement field's smoothing, cap and passes, the blur taken out to
# compare fine detail (WORK_SIDE pixels), the least lower quartile of block agreement that verifies under it, and the
# least agreement of a candidate it is tried on. Chosen on screen_quality's probe copies planted with another seed than
# its reports: 59 of 60 elastic copies and 23 of 60 grid distortions verify; distinct images: the six data sets' 835
# negatives at most 0.72, the look-alike hands of tests/fixtures 0.72
FLOW_SMOOTH, FLOW_REACH, FLOW_PASSES, FLOW_DETAIL, FLOW_AGREEMENT, FLOW_FROM = 3.0, 12.0, 3, 3.0, 0.78, 0.25
# a blend with an image the index does not hold (`_detail_agreement`): the fine detail (each image less its Gaussian
# blur of DETAIL_BLUR pixels) of the aligned training image shows in the query's at one gain everywhere. Verified where
# the blocks' median correlation of fine detail and the share of blocks whose gain lies within DETAIL_SLOPE of the
# median gain both reach DETAIL_AGREEMENT. Chosen on copies planted outside screen_quality's reports (blends of 50-75%
# with a real image that is not indexed, or another indexed one): 39 of 49 such blends with enough inliers, 21 by the
# plain agreement; distinct images with enough inliers (kermany chest x-rays, MedNIST hands) at most 0.62, one
# blood-smear pair 0.75
DETAIL_BLUR, DETAIL_SLOPE, DETAIL_AGREEMENT = 1.5, 0.35, 0.8
# a colour query whose luma correlates less than this with its colours' main axis is verified as that grey copy too
PRINCIPAL_LUMA = 0.9
# inliers that make a verified candidate a near-copy at any calibrated threshold (the calibrated value's upper bound)
VERIFY_CAP = 30
SETTINGS = {
    "work_side": WORK_SIDE,
    "keypoints": STORED_KEYPOINTS,
    "contrast": CONTRAST,
    "thumb_side": THUMB_SIDE,
    "agreement": AGREEMENT,
    "refine": "ecc",
    "version": 3,
}

_GRID = np.arange(128).reshape(4, 4, 8)  # OpenCV's SIFT layout: (row bin, column bin, orientation bin)
# an inverted image's descriptor at the same keypoint: the spatial grid turned by 180 degrees
INVERTED = _GRID[::-1, ::-1, :].ravel()
# a mirrored image's descriptor: rows of the grid reversed, orientation bins mirrored
MIRRORED = _GRID[::-1, :, :][:, :, (-np.arange(8)) % 8].ravel()


def grey(image, side: int = WORK_SIDE) -> np.ndarray:
    """The image as a side x side grey uint8 array (bicubic)."""
    from PIL import Image

    return np.asarray(to_8bit(image).convert("L").resize((side, side), Image.Resampling.BICUBIC), np.uint8)


def features(image, keep: int = QUERY_KEYPOINTS) -> tuple[np.ndarray, np.ndarray]:
    """(points float32 (n, 2) in WORK_SIDE pixels, SIFT descriptors uint8 (n, 128)) of the `keep` strongest
    keypoints of an image (none for None)."""
    if image is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    return _keypoints(grey(image), keep)


def query_features(image) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A query's keypoints (`features`) and its WORK_SIDE grey copy, for the dense check."""
    if image is None:
        return (*features(None), None)
    pixels = grey(image)
    return (*_keypoints(pixels, QUERY_KEYPOINTS, spread=True), pixels)


def colour_features(image) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`query_features` of a colour query's other grey copy (`principal_grey`), where it is not its luma."""
    pixels = None if image is None else principal_grey(image)
    return None if pixels is None else (*_keypoints(pixels, QUERY_KEYPOINTS, spread=True), pixels)


def principal_grey(image, side: int = WORK_SIDE) -> np.ndarray | None:
    """A colour image's pixels projected on their colours' first principal component (its sign that of luma,
    stretched to 0-255), where that differs from luma (correlation below PRINCIPAL_LUMA): a false-colour copy of a
    grey image (a colour map's luma is not monotone in the grey level, its main colour axis mostly is), a strong
    tint. None for grey images and for colour images whose luma already is their main axis."""
    from PIL import Image

    image = to_8bit(image)
    if image.mode != "RGB":
        return None
    rgb = np.asarray(image.resize((side, side), Image.Resampling.BICUBIC), np.float32).reshape(-1, 3)
    rgb -= rgb.mean(axis=0)
    axis = np.linalg.eigh(rgb.T @ rgb)[1][:, -1]
    principal, luma = rgb @ axis, rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    r = float(np.corrcoef(principal, luma)[0, 1]) if principal.std() > 1e-3 and luma.std() > 1e-3 else 1.0
    if abs(r) >= PRINCIPAL_LUMA:
        return None
    principal *= np.sign(r) or 1.0
    low, high = np.percentile(principal, (0.5, 99.5))
    stretched = (principal - low) * 255 / max(high - low, 1e-6)
    return np.clip(stretched, 0, 255).astype(np.uint8).reshape(side, side)


def _keypoints(grey: np.ndarray, keep: int, spread: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(points, descriptors) of the `keep` strongest SIFT keypoints; `spread` (a query's): first the SPREAD_QUOTA
    strongest of every cell of a SPREAD_GRID x SPREAD_GRID grid, then the strongest of the rest, so a noisy or busy
    part of the image (a noise border, an overlay, the image a region was pasted into) cannot take every keypoint
    from the part that is a copy."""
    import cv2

    cv2.setNumThreads(1)  # one image per call: threads of its own would only compete with the caller's
    sift = cv2.SIFT_create(nfeatures=0 if spread else keep, contrastThreshold=CONTRAST)
    if spread:
        found = sift.detect(grey, None)
        order = np.argsort([-k.response for k in found], kind="stable")
        points = np.array([found[i].pt for i in order], np.float32).reshape(-1, 2)
        chosen = _spread(points, order, grey.shape)[:keep]
        keypoints, descriptors = (
            sift.compute(grey, [found[i] for i in np.sort(chosen)]) if found else ((), None)
        )
    else:
        keypoints, descriptors = sift.detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    order = np.argsort([-k.response for k in keypoints], kind="stable")[:keep]
    points = np.array([keypoints[i].pt for i in order], np.float32)
    return points, np.clip(np.rint(descriptors[order]), 0, 255).astype(np.uint8)


def _spread(points: np.ndarray, order: np.ndarray, shape: tuple) -> np.ndarray:
    """`order` (keypoints strongest first, at `points` (x, y) in an image of `shape` (rows, columns)) rearranged: each
    grid cell's SPREAD_QUOTA strongest first."""
    size = np.array([shape[1], shape[0]], np.float32)
    cells = np.minimum((points * SPREAD_GRID // size).astype(np.int64), SPREAD_GRID - 1)
    cell = cells[:, 1] * SPREAD_GRID + cells[:, 0]
    rank = np.zeros(len(cell), np.int64)
    for c in np.unique(cell):
        rank[cell == c] = np.arange(int((cell == c).sum()))
    first = rank < SPREAD_QUOTA
    return np.concatenate([order[first], order[~first]])


def root(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (L1-normalised, square-rooted: unit L2 norm) as float32."""
    d = descriptors.astype(np.float32)
    return np.sqrt(d / (d.sum(axis=1, keepdims=True) + 1e-7))


@dataclass
class LocalFeatures:
    """The training images' keypoints: positions, descriptors, and which image each belongs to."""

    points: np.ndarray  # float32 (N, 2)
    descriptors: np.ndarray  # uint8 (N, 128)
    offsets: np.ndarray  # int64 (images + 1,): image i's keypoints are rows offsets[i]:offsets[i + 1]
    thumbs: np.ndarray | None = (
        None  # uint8 (images, THUMB_SIDE, THUMB_SIDE) grey; None: an index from before
    )
    search: _DescriptorSearch | None = field(default=None, repr=False)  # built on first use, saved with them

    @classmethod
    def from_images(cls, images: list, threads: int = 2) -> LocalFeatures:
        """Keypoints of every image (STORED_KEYPOINTS strongest); an unreadable image has none."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, threads)) as pool:  # OpenCV releases the GIL
            found = list(pool.map(stored_features, images))
        return cls.from_parts(found)

    @classmethod
    def from_parts(cls, found: list[tuple]) -> LocalFeatures:
        """From per-image (points, descriptors, thumbnail) (thumbnails optional: all or none)."""
        counts = [len(part[0]) for part in found]
        thumbs = [part[2] for part in found if len(part) > 2]
        return cls(
            np.concatenate([part[0] for part in found] or [np.zeros((0, 2))]).astype(np.float32),
            np.concatenate([part[1] for part in found] or [np.zeros((0, 128))]).astype(np.uint8),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            np.stack(thumbs).astype(np.uint8) if found and len(thumbs) == len(found) else None,
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def image(self, i: int) -> tuple:
        """(points, descriptors[, thumbnail]) of training image i."""
        a, b = self.offsets[i], self.offsets[i + 1]
        if self.thumbs is None:
            return self.points[a:b], self.descriptors[a:b]
        return self.points[a:b], self.descriptors[a:b], self.thumbs[i]

    def owners(self) -> np.ndarray:
        """The training image of every stored keypoint."""
        return np.repeat(np.arange(len(self)), np.diff(self.offsets))

    def descriptor_search(self) -> _DescriptorSearch:
        """The search of all stored descriptors (built once, here or at index build)."""
        if self.search is None:
            self.search = _DescriptorSearch.build(self.descriptors, self.owners())
        return self.search

    def save(self, path: Path) -> None:
        """Write local.npz (uncompressed, so it loads fast), with the descriptor search."""

        search = self.descriptor_search()
        with open(path, "wb") as handle:
            np.savez(
                handle,
                points=self.points,
                descriptors=self.descriptors,
                offsets=self.offsets,
                **({} if self.thumbs is None else {"thumbs": self.thumbs}),
                basis=search.basis,
                search=index_bytes(search.index),
            )

    @classmethod
    def load(cls, path: Path, count: int) -> LocalFeatures:
        """Read local.npz; MedisynError when it is missing or does not cover `count` images."""
        try:
            with np.load(path) as data:
                thumbs = data["thumbs"] if "thumbs" in data else None
                local = cls(data["points"], data["descriptors"], data["offsets"], thumbs)
                if "search" in data:
                    local.search = _DescriptorSearch.load(data["basis"], data["search"], local.owners())
        except (OSError, KeyError, ValueError) as exc:
            raise MedisynError(f"{path}: cannot read the local features ({exc}); rebuild the index") from exc
        if (
            len(local) != count
            or local.offsets[-1] != len(local.descriptors)
            or (local.thumbs is not None and len(local.thumbs) != count)
        ):
            raise MedisynError(
                f"{path}: local features of {len(local)} images, expected {count}; rebuild the index"
            )
        return local


class Verifier:
    """Scores queries against training images: inliers of a RANSAC affine model between their keypoints, confirmed by
    the agreement of the aligned images where the inliers are (module docstring)."""

    def __init__(self, local: LocalFeatures):
        self.local = local
        # `_scanned`, built on a blend's first scan
        self.scan: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def score(self, keypoints: list, candidates: list, exclude: list | None = None) -> list[tuple[int, int]]:
        """Per query (its `query_features`, or `features` without the dense check; a fourth item, its
        `colour_features` or None, is tried where the first verifies nothing): (inliers, training id) of its
        best-verified candidate among `candidates` (ids per query) and the training images its descriptors vote
        for, but none of `exclude` (ids per query); (0, -1) when none verifies. Where the index keeps thumbnails
        and the query its grey copy, a candidate whose aligned image agrees less than AGREEMENT counts as 0, and a
        blend of two training images in register (`registered`) counts VERIFY_CAP where nothing verifies with as many
        inliers."""
        out = []
        for found, ids, banned in zip(keypoints, candidates, exclude or [()] * len(keypoints)):
            pixels = found[2] if len(found) > 2 else None
            best = self.verified(found[0], found[1], pixels, ids, banned)
            if best[1] < 0 and len(found) > 3 and found[3] is not None:
                best = self.verified(*found[3], ids, banned)
            if best[0] < VERIFY_CAP and pixels is not None and self.local.thumbs is not None:
                # a blend in register may be verified by too few inliers where its pair explains it
                best = max(best, self.registered(pixels, set(banned)))
            out.append(best)
        return out

    def verified(
        self, points: np.ndarray, descriptors: np.ndarray, pixels: np.ndarray | None, ids: list, banned
    ) -> tuple[int, int]:
        """`best` of one grey copy of a query over `ids` and the training images its descriptors vote for."""
        if len(points) < MIN_INLIERS:
            return 0, -1
        variants = descriptor_variants(root(descriptors))
        ids = [
            i
            for i in dict.fromkeys([int(i) for i in ids] + self.voted(variants))
            if i >= 0 and i not in banned
        ]
        return self.best(self.matches(points, variants, ids), pixels)

    def registered(self, pixels: np.ndarray, banned: set) -> tuple[int, int]:
        """(VERIFY_CAP, id) of the training image that, with a second one, explains the whole query superposed in
        register (unmoved) at REGISTERED or more -- a blend of two training images whose keypoints need not match
        (smooth blood smears) -- counted as the most inliers any calibrated threshold asks for; (0, -1) for none.
        The first image is the thumbnail most correlated with the query (at least PAIR_FROM, squared)."""
        if not 0 < len(self.local) <= SCAN_LIMIT:
            return 0, -1
        rows, _, spread = self._scanned()
        query = _pooled(pixels.astype(np.float32))
        query -= query.mean()
        with blas_threads():
            correlation = (rows @ query) / (spread * max(float(np.linalg.norm(query)), 1e-6))
        correlation[list(banned)] = 0.0
        first = int(np.argmax(correlation**2))
        if correlation[first] ** 2 < PAIR_FROM:
            return 0, -1
        warped, whole = _upsampled(self.local.thumbs[first]), np.ones((WORK_SIDE, WORK_SIDE), np.uint8)
        for other in self.in_register(pixels, first, IDENTITY, whole, least=REGISTERED_SHARE):
            if (
                other not in banned
                and _mixed(pixels, warped, _upsampled(self.local.thumbs[other]), whole) >= REGISTERED
            ):
                return VERIFY_CAP, first
        return 0, -1

    def best(self, matches: dict, pixels: np.ndarray | None) -> tuple[int, int]:
        """(inliers, id) of the candidate with the most inliers among those whose aligned image agrees with the query
        (any, without the dense check), or whose agreement a blend explains (`blended`); (0, -1) for none.
        `matches`: id -> `match`."""
        found = {i: m for i, m in matches.items() if m[0] > 0}
        if pixels is None or self.local.thumbs is None:
            return max(((m[0], i) for i, m in found.items()), default=(0, -1))
        noise = _noise(pixels)  # the query's, once for all its candidates
        fits = {
            i: aligned(
                pixels, self.local.thumbs[i], m[1], m[2], deform=m[0] >= VERIFY_FLOOR, query_noise=noise
            )
            for i, m in found.items()
        }
        verified = [(found[i][0], i) for i, (a, _) in fits.items() if a >= AGREEMENT]
        return max(verified, default=(0, -1)) if verified else self.blended(pixels, matches, fits)

    def blended(self, pixels: np.ndarray, matches: dict, fits: dict) -> tuple[int, int]:
        """(inliers, id) of the candidate that agrees best when it and another training image together explain the
        query (a blend of two training images: each alone explains only its share of every block); (0, -1) when no
        pair does. The partners tried: the other candidates, the training images the query's remainder (the
        first image's fit taken out) votes for, and those a scan of every thumbnail in register finds
        (`in_register`), each aligned by its own affine model or by the first one's (superposed in register; ECC
        refined where that made the first agree better). `fits`: id -> `aligned`."""
        first = max(fits, key=lambda i: fits[i][0], default=None)
        if first is None or fits[first][0] < PAIR_FROM:
            return 0, -1
        count, _, matched = matches[first]
        model = fits[first][1]
        warped, inside = _warped(_upsampled(self.local.thumbs[first]), model)
        region = _hull(matched, grow=9) & inside  # the first image's blocks, as `agreement` compares them
        partners = {i: m[1] for i, m in matches.items() if i != first}
        partners.update(self.remainder_votes(pixels, warped, inside, set(matches)))
        partners.update(
            {i: None for i in self.in_register(pixels, first, model, region) if i not in partners}
        )
        for other, own in partners.items():
            partner = _upsampled(self.local.thumbs[other])
            for partner_model in [own, model] if own is not None else [model]:
                second, covered = _warped(partner, partner_model)
                if _mixed(pixels, warped, second, region & covered) >= AGREEMENT:
                    return count, first
        return 0, -1

    def remainder_votes(self, pixels: np.ndarray, warped: np.ndarray, inside: np.ndarray, known: set) -> dict:
        """id -> affine model (None: none) of the training images, other than `known`, that the keypoints of the
        query's remainder vote for: the query less its least-squares fit of `warped` (a training image aligned to
        it, landing on `inside`)."""
        points, descriptors = _keypoints(_remainder(pixels, warped, inside), QUERY_KEYPOINTS, spread=True)
        if len(points) < MIN_INLIERS:
            return {}
        variants = descriptor_variants(root(descriptors))
        voted = [i for i in self.voted(variants) if i not in known]
        return {i: found[1] for i, found in self.matches(points, variants, voted).items()}

    def prepare(self) -> None:
        """Build what the blend scan reads (`_scanned`) now rather than in the first query that needs it."""
        if self.local.thumbs is not None and 0 < len(self.local) <= SCAN_LIMIT:
            self._scanned()

    def in_register(
        self, pixels: np.ndarray, first: int, model: np.ndarray, region: np.ndarray, least: float = 0.0
    ) -> list[int]:
        """The SCANNED training images (not `first`) that best explain, with `first`, the query over `region` when
        superposed in register with it (the query aligned onto `first` by `model`): a least-squares scan of every
        thumbnail (at SCAN_SIDE), for blends whose second image has no keypoints of its own to vote. None above
        SCAN_LIMIT images, and none whose share is not above `least`."""
        import cv2

        if len(self.local.thumbs) > SCAN_LIMIT:
            return []
        side, to_train = (WORK_SIDE, WORK_SIDE), model.astype(np.float32)  # the query in the first's frame
        query = _pooled(cv2.warpAffine(pixels.astype(np.float32), to_train, side, flags=cv2.INTER_LINEAR))
        region = cv2.warpAffine(region.astype(np.float32), to_train, side, flags=cv2.INTER_NEAREST)
        mask = _pooled(region) > 0.99
        if mask.sum() < 32:
            return []
        rows, squares, _ = self._scanned()
        with blas_threads():
            scores = _second_image_scores(query, mask, rows, squares, first)
        return [int(i) for i in np.argsort(-scores, kind="stable")[:SCANNED] if scores[i] > least]

    def _scanned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every thumbnail at SCAN_SIDE as a float32 row, its squares, and its spread (the norm of the row less its
        mean), built once (`prepare`)."""
        if self.scan is None:
            rows = _pooled(self.local.thumbs)
            spread = np.sqrt(np.maximum((rows**2).sum(axis=1) - rows.sum(axis=1) ** 2 / rows.shape[1], 1e-6))
            self.scan = rows, rows**2, spread
        return self.scan

    def match(
        self, points: np.ndarray, variants: np.ndarray, i: int
    ) -> tuple[int, np.ndarray | None, np.ndarray]:
        """(inliers, the 2x3 affine map from query to training pixels, the query's inlier points) of the variant
        with the most inliers; (0, None, no points) when none has a valid model."""
        return self.matches(points, variants, [i])[i]

    def matches(self, points: np.ndarray, variants: np.ndarray, ids: list[int]) -> dict:
        """id -> `match` for each of `ids`: their stored descriptors scored against the query's in one product."""
        found = {i: NO_MATCH for i in ids}
        kept = [i for i in ids if self.local.offsets[i + 1] - self.local.offsets[i] >= MIN_INLIERS]
        if not kept:
            return found
        with blas_threads():
            sims = variants @ root(np.concatenate([self.local.image(i)[1] for i in kept])).T
        start = 0
        for i in kept:
            train_points = self.local.image(i)[0]
            part = sims[:, start : start + len(train_points)]
            start += len(train_points)
            found[i] = self._best_variant(points, part.copy(), train_points)
        return found

    @staticmethod
    def _best_variant(points: np.ndarray, sims: np.ndarray, train_points: np.ndarray) -> tuple:
        """The `match` of one training image from its similarity to every query descriptor variant."""
        rows = np.arange(len(sims))
        nearest = np.argmax(sims, axis=1)
        first = sims[rows, nearest]
        sims[rows, nearest] = -1.0
        second = sims.max(axis=1)
        good = (2 - 2 * first) < RATIO**2 * (2 - 2 * second)  # squared distances of unit vectors
        n = len(points)
        models = (
            _affine_model(
                points[good[v * n : (v + 1) * n]],
                train_points[nearest[v * n : (v + 1) * n][good[v * n : (v + 1) * n]]],
            )
            for v in range(len(sims) // n)
        )
        return max(models, key=lambda found: found[0], default=NO_MATCH)

    def voted(self, query: np.ndarray) -> list[int]:
        """The VOTED training images most query descriptors have as a nearest stored descriptor."""
        return self.local.descriptor_search().vote(query, VOTED)


def descriptor_variants(query: np.ndarray) -> np.ndarray:
    """A query's RootSIFT descriptors as they would read in its intensity inversion, its mirror image and both,
    stacked after the originals: any of the four matches a copy made under that change."""
    mirrored = query[:, MIRRORED]
    return np.concatenate([query, query[:, INVERTED], mirrored, mirrored[:, INVERTED]])


def agreement(query: np.ndarray, thumb: np.ndarray, model: np.ndarray, matched: np.ndarray) -> float:
    """Median over the BLOCK x BLOCK blocks inside the inliers' convex hull (and inside the warped training image)
    of the squared correlation between the query's grey copy and the training thumbnail warped onto it by `model`
    (query -> training pixels), under the RANSAC model or that model refined by ECC where it agrees better (the
    keypoints fix the map to a pixel or two, which a fine texture cannot absorb); 0 where fewer than 4 blocks have
    texture in both."""

    return aligned(query, thumb, model, matched)[0]


def aligned(
    query: np.ndarray,
    thumb: np.ndarray,
    model: np.ndarray,
    matched: np.ndarray,
    deform: bool = False,
    query_noise: float | None = None,
) -> tuple[float, np.ndarray]:
    """(`agreement`, the affine model it was measured under: `model` or its ECC refinement). Where no affine map
    aligns the two well enough, ECC also refines the map to a homography (a copy seen in perspective: keypoints
    match it, one affine map does not lay it on its source) and that agreement counts; the model returned stays
    the affine one, which the blend steps warp by. `deform`: where neither agrees, a smooth displacement on top
    (`_deformed`, an elastic deformation) that agrees in FLOW_AGREEMENT of the lower quartile counts as AGREEMENT.
    `query_noise`: the query's `_noise`, where the caller has it (measured here otherwise)."""
    train, hull = _upsampled(thumb), _hull(matched, grow=9)
    query_noise = _noise(query) if query_noise is None else query_noise
    noise = NOISE_GAIN * max(0.0, query_noise - _noise(train))
    found = _block_agreement(query, train, model, hull, noise)
    if REFINE_FROM <= found < REFINE_BELOW:
        refined = _refined(query, train, model, matched)
        better = _block_agreement(query, train, refined, hull, noise)
        if better > found:
            found, model = better, refined
    if REFINE_FROM <= found < AGREEMENT:
        projective = _refined(query, train, model, matched, homography=True)
        found = max(found, _block_agreement(query, train, projective, hull, noise))
    if PAIR_FROM <= found < AGREEMENT and _detail_agreement(query, train, model, hull) >= DETAIL_AGREEMENT:
        found = AGREEMENT
    if (
        deform
        and FLOW_FROM <= found < AGREEMENT
        and _deformed(query, train, model, hull, noise) >= FLOW_AGREEMENT
    ):
        found = AGREEMENT
    return found, model


def _block_agreement(
    query: np.ndarray, train: np.ndarray, model: np.ndarray, hull: np.ndarray, noise: float = 0.0
) -> float:
    """`agreement` under one model: `train` (WORK_SIDE float32) warped onto the query, blocks inside `hull`, the
    query's `noise` (per-pixel variance) discounted."""
    warped, inside = _warped(train, model)
    return _explained(query, [warped], hull & inside, noise)


def _deformed(
    query: np.ndarray, train: np.ndarray, model: np.ndarray, hull: np.ndarray, noise: float = 0.0
) -> float:
    """The lower quartile of the blocks' agreement in fine detail (each image less its Gaussian blur of FLOW_DETAIL
    pixels) with the training image warped by `model` and then moved by a smooth, small displacement field: OpenCV's
    DIS optical flow to the query, smoothed by a Gaussian of FLOW_SMOOTH pixels, in FLOW_PASSES passes (each from
    the last one's result), the sum capped at FLOW_REACH pixels. A copy under an elastic deformation agrees in
    nearly every block; a look-alike's outlines can be moved onto the query, its fine texture cannot, and the lower
    quartile reads the blocks the outlines do not fill."""
    import cv2

    warped, inside = _warped(train, model)
    where = (hull & inside) > 0
    if where.sum() < 64:
        return 0.0
    # the training image brought to the query's contrast (or inverted) before the flow compares them
    x, y = warped[where], query[where].astype(np.float32)
    gain = float(np.cov(x, y)[0, 1] / (x.var() + 1e-6))
    rows, columns = np.mgrid[0:WORK_SIDE, 0:WORK_SIDE].astype(np.float32)
    flow, moved, kept = np.zeros((WORK_SIDE, WORK_SIDE, 2), np.float32), warped, inside
    search = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for _ in range(FLOW_PASSES):
        matched = np.clip((moved - x.mean()) * gain + y.mean(), 0, 255).astype(np.uint8)
        flow += cv2.GaussianBlur(search.calc(query, matched, None), (0, 0), FLOW_SMOOTH)
        flow *= np.minimum(1.0, FLOW_REACH / np.maximum(np.linalg.norm(flow, axis=2, keepdims=True), 1e-6))
        x_map, y_map = columns + flow[..., 0], rows + flow[..., 1]
        moved = cv2.remap(warped, x_map, y_map, cv2.INTER_LINEAR)
        kept = cv2.remap(inside, x_map, y_map, cv2.INTER_NEAREST)
    blocks = _block_shares(
        _fine(query.astype(np.float32), FLOW_DETAIL), [_fine(moved, FLOW_DETAIL)], hull & kept, noise
    )
    return float(np.percentile(blocks, 25)) if len(blocks) else 0.0


def _detail_agreement(query: np.ndarray, train: np.ndarray, model: np.ndarray, hull: np.ndarray) -> float:
    """How plainly the training image warped by `model` is part of the query over `hull`, whatever else the query
    holds: a blend with an image the index does not hold (DETAIL_BLUR). Per BLOCK x BLOCK block wholly inside where
    both have fine detail: its correlation and its gain (the query's detail regressed on the training image's); the
    smaller of the median correlation (signed by the median gain: an inversion) and the share of blocks whose gain lies
    within DETAIL_SLOPE of the median. A look-alike's outlines correlate, its texture does not, and its gains scatter;
    0 where fewer than 4 blocks have detail."""
    warped, inside = _warped(train, model)
    full = _tiles(hull & inside).min(axis=1) > 0
    q, x = (
        _tiles(_fine(image, DETAIL_BLUR))[full].astype(np.float64)
        for image in (query.astype(np.float32), warped)
    )
    q, x = q - q.mean(axis=1, keepdims=True), x - x.mean(axis=1, keepdims=True)
    textured = (q.std(axis=1) > 2) & (x.std(axis=1) > 2)
    if textured.sum() < 4:
        return 0.0
    q, x = q[textured], x[textured]
    product, qq, xx = (q * x).sum(axis=1), (q * q).sum(axis=1), (x * x).sum(axis=1)
    gains = product / xx
    gain = float(np.median(gains))
    correlation = float(np.median(product / np.sqrt(qq * xx))) * (1.0 if gain >= 0 else -1.0)
    consistent = float(np.mean(np.abs(gains - gain) <= DETAIL_SLOPE * abs(gain)))
    return min(correlation, consistent)


def _fine(image: np.ndarray, sigma: float) -> np.ndarray:
    """The image's fine detail: itself less its Gaussian blur of `sigma` pixels (float32)."""
    import cv2

    return image - cv2.GaussianBlur(image, (0, 0), sigma)


def _noise(image: np.ndarray) -> float:
    """The white-noise variance of a WORK_SIDE grey image where it is flattest (`noise_variance`), on every second
    pixel: the scale of a 64 px image's own pixels, which an upsampled copy smooths."""
    return noise_variance(image[::2, ::2])


def _mixed(query: np.ndarray, first: np.ndarray, second: np.ndarray, region: np.ndarray) -> float:
    """`_explained` of the query by one mix of two aligned images, in the proportion a least-squares fit over the
    whole `region` finds: a blend mixes two images in one proportion everywhere, where look-alikes (neighbouring
    slices of a scan, two hands) would need a proportion of their own in every block; 0 when the fit does not add
    the two with one sign (a blend, or its inversion)."""
    where = region > 0
    if where.sum() < 16:
        return 0.0
    x = np.stack([first[where], second[where], np.ones(int(where.sum()))], axis=1).astype(np.float64)
    (a, b, _), *_ = np.linalg.lstsq(x, query[where].astype(np.float64), rcond=None)
    if a * b <= 0:
        return 0.0
    return _explained(query, [first + np.float32(b / a) * second], region)


def _pooled(images: np.ndarray) -> np.ndarray:
    """Square images (..., side, side) averaged down to SCAN_SIDE x SCAN_SIDE, flattened (..., SCAN_SIDE**2) float32."""
    lead, f = images.shape[:-2], images.shape[-1] // SCAN_SIDE
    grid = images.reshape(*lead, SCAN_SIDE, f, SCAN_SIDE, f).mean(axis=(-3, -1), dtype=np.float32)
    return grid.reshape(*lead, SCAN_SIDE * SCAN_SIDE)


def _second_image_scores(
    query: np.ndarray, mask: np.ndarray, rows: np.ndarray, squares: np.ndarray, first: int
) -> np.ndarray:
    """Per row (a thumbnail's pixels): the share of the query's variance over `mask` left after a least-squares fit
    of row `first` (and a constant) that a fit of it explains (-1 for `first` itself)."""
    basis = np.zeros((len(query), 2))
    basis[mask] = np.linalg.qr(np.stack([np.ones(mask.sum()), rows[first, mask]], axis=1))[0]
    rest = np.where(mask, query, 0.0)
    rest -= basis @ (basis.T @ rest)
    product = rows @ np.column_stack([basis, rest]).astype(np.float32)  # (n, 3)
    energy = squares @ mask.astype(np.float32) - np.einsum("nk,nk->n", product[:, :2], product[:, :2])
    scores = product[:, 2] ** 2 / (np.maximum(energy, 1e-3) * max(float(rest @ rest), 1e-9))
    scores[first] = -1.0
    return scores


def _hull(points: np.ndarray, grow: int = 0) -> np.ndarray:
    """uint8 WORK_SIDE mask of the points' convex hull, dilated by a `grow` x `grow` square (0: not dilated)."""
    import cv2

    mask = np.zeros((WORK_SIDE, WORK_SIDE), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.reshape(-1, 2).astype(np.float32)).astype(np.int32), 1)
    return cv2.dilate(mask, np.ones((grow, grow), np.uint8)) if grow else mask


def _remainder(query: np.ndarray, warped: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The query less its least-squares fit (gain and offset) of `warped` where that lands, as uint8 (1st to 99th
    percentile stretched): in a blend, the other image."""
    rest = query.astype(np.float64)
    where = inside > 0
    if where.sum() > 16:
        x, y = warped[where].astype(np.float64), rest[where]
        gain = float(np.cov(x, y)[0, 1] / (x.var() + 1e-9))
        rest[where] = y - gain * x
    low, high = np.percentile(rest, (1, 99))
    return np.clip((rest - low) * 255 / max(high - low, 1e-6), 0, 255).astype(np.uint8)


def _upsampled(thumb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(thumb, (WORK_SIDE, WORK_SIDE), interpolation=cv2.INTER_CUBIC).astype(np.float32)


def _warped(train: np.ndarray, model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training image warped onto the query by `model` (query -> training pixels; 2x3 affine or 3x3 homography),
    and where it lands (eroded)."""
    import cv2

    side, flags = WORK_SIDE, cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warp = cv2.warpPerspective if model.shape == (3, 3) else cv2.warpAffine
    warped = warp(train, model, (side, side), flags=flags)
    inside = warp(np.ones((side, side), np.uint8), model, (side, side), flags=flags)
    return warped, cv2.erode(inside, np.ones((5, 5), np.uint8))


def _tiles(image: np.ndarray) -> np.ndarray:
    """A WORK_SIDE image's BLOCK x BLOCK blocks as rows (blocks, BLOCK * BLOCK), row by row."""
    blocks = WORK_SIDE // BLOCK
    return image.reshape(blocks, BLOCK, blocks, BLOCK).swapaxes(1, 2).reshape(-1, BLOCK * BLOCK)


def _explained(query: np.ndarray, images: list[np.ndarray], region: np.ndarray, noise: float = 0.0) -> float:
    """The median of `_block_shares`: 0 where fewer than 4 blocks have texture."""
    blocks = _block_shares(query, images, region, noise)
    return float(np.median(blocks)) if len(blocks) else 0.0


def _block_shares(
    query: np.ndarray, images: list[np.ndarray], region: np.ndarray, noise: float = 0.0
) -> np.ndarray:
    """Per BLOCK x BLOCK block wholly inside `region` where the query and one of `images` have texture: the share of
    the query's variance a least-squares fit of the images explains (one image: the squared correlation); no
    blocks where fewer than 4 have texture. `noise`: the per-pixel variance of noise the query has
    and the images have not (a noisy copy): no fit explains it, so it is taken out of each block's variance, at most
    down to KEPT of it (the correlation corrected for attenuation)."""
    full = _tiles(region).min(axis=1) > 0
    q = _tiles(query.astype(np.float32))[full]
    x = np.stack([_tiles(image)[full] for image in images], axis=1)  # (blocks, images, pixels)
    q, x = q - q.mean(axis=1, keepdims=True), x - x.mean(axis=2, keepdims=True)
    discount = (BLOCK * BLOCK - 1) * noise  # a block's noise energy once its mean is removed
    textured = (q.std(axis=1) > 2) & (x.std(axis=2) > 2).any(axis=1)
    if textured.sum() < 4:
        return np.zeros(0)
    q, x = q[textured].astype(np.float64), x[textured].astype(np.float64)
    energy = np.einsum("bp,bp->b", q, q)
    gram = np.einsum("bip,bjp->bij", x, x) + 1e-6 * np.eye(len(images))
    fit = np.einsum("bip,bp->bi", x, q)
    explained = np.einsum("bi,bi->b", fit, np.linalg.solve(gram, fit[..., None])[..., 0])
    return np.clip(explained / np.maximum(energy - discount, KEPT * energy), 0.0, 1.0)


def _refined(
    query: np.ndarray, train: np.ndarray, model: np.ndarray, matched: np.ndarray, homography: bool = False
) -> np.ndarray:
    """The affine model (query -> training pixels) refined by ECC: the map that maximises the correlation of the
    query with the warped training image, started from `model`, over the training image's part that the inliers
    cover (a pasted region's new surroundings must not pull it); `model` itself where ECC does not converge.
    `homography`: refined to a 3x3 homography instead."""
    import cv2

    side = WORK_SIDE
    mask = _hull(cv2.transform(matched.reshape(-1, 1, 2).astype(np.float32), model.astype(np.float32)))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, 1e-4)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(train, model, (side, side), flags=flags)
    inside = cv2.warpAffine(mask, model, (side, side), flags=flags) > 0
    if inside.sum() < 16:
        return model
    template = query.astype(np.float32)
    a, b = template[inside] - template[inside].mean(), warped[inside] - warped[inside].mean()
    if float(a @ b) < 0:  # an inverted copy: ECC climbs positive correlation
        template = 255 - template
    start, motion = model.astype(np.float32), cv2.MOTION_AFFINE
    if homography:
        start, motion = np.vstack([start, [0.0, 0.0, 1.0]]).astype(np.float32), cv2.MOTION_HOMOGRAPHY
    try:
        _, refined = cv2.findTransformECC(template, train, start, motion, criteria, mask, 3)
    except cv2.error:  # no convergence, or a flat image
        return model
    return refined


def _affine_model(query: np.ndarray, train: np.ndarray) -> tuple[int, np.ndarray | None, np.ndarray]:
    """(inliers, model, the query's inlier points) of the RANSAC affine model of matched points: 0 inliers below
    MIN_INLIERS, for a degenerate model, or when they cover less than MIN_SPREAD of the query and of the training
    image."""
    import cv2

    if len(query) < MIN_INLIERS:
        return NO_MATCH
    model, mask = cv2.estimateAffine2D(
        query, train, ransacReprojThreshold=RANSAC_PIXELS, maxIters=500, refineIters=0
    )
    if model is None or mask is None:
        return NO_MATCH
    det = abs(np.linalg.det(model[:, :2]))
    count = int(mask.sum())
    if not (1 / 16 <= det <= 16 and count >= MIN_INLIERS):
        return NO_MATCH
    kept = mask.ravel() > 0
    matched = query[kept].astype(np.float32)
    hull = max(
        cv2.contourArea(cv2.convexHull(points)) for points in (matched, train[kept].astype(np.float32))
    )
    if hull < MIN_SPREAD * WORK_SIDE**2:
        return NO_MATCH
    return count, model, matched


def stored_features(image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A training image's keypoints (STORED_KEYPOINTS strongest) and grey thumbnail (zeros for an unreadable one)."""
    if image is None:
        return (*features(None), np.zeros((THUMB_SIDE, THUMB_SIDE), np.uint8))
    return (*features(image, STORED_KEYPOINTS), grey(image, THUMB_SIDE))


class _DescriptorSearch:
    """Nearest stored descriptors through a PCA projection of RootSIFT (FAISS flat, IVF above 50k descriptors)."""

    def __init__(self, basis: np.ndarray, index, owners: np.ndarray):
        self.basis, self.index, self.owners = basis, index, owners

    @classmethod
    def build(cls, descriptors: np.ndarray, owners: np.ndarray) -> _DescriptorSearch:
        """PCA basis from a sample, then every descriptor projected (in blocks) and added."""
        import faiss

        rows = np.sort(np.random.default_rng(0).permutation(len(descriptors))[:20000])
        sample = root(descriptors[rows]).astype(np.float64)
        with blas_threads():
            _, basis = np.linalg.eigh(sample.T @ sample)
            basis = np.ascontiguousarray(basis[:, ::-1][:, :PROJECTED], np.float32)
            projected = np.concatenate(
                [root(descriptors[i : i + 65536]) @ basis for i in range(0, len(descriptors), 65536)]
                or [np.zeros((0, PROJECTED), np.float32)]
            )
        if len(projected) > 50_000:
            lists = int(min(4096, 4 * np.sqrt(len(projected))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(PROJECTED), PROJECTED, lists)
            index.train(projected[np.random.default_rng(1).permutation(len(projected))[: 32 * lists]])
            index.nprobe = 4
        else:
            index = faiss.IndexFlatL2(PROJECTED)
        index.add(np.ascontiguousarray(projected))
        return cls(basis, index, owners)

    @classmethod
    def load(cls, basis: np.ndarray, serialized: np.ndarray, owners: np.ndarray) -> _DescriptorSearch:
        """From local.npz's basis and serialized FAISS index."""
        import faiss

        index = index_from_bytes(serialized)
        if hasattr(index, "nprobe"):
            faiss.extract_index_ivf(index).nprobe = 4
        return cls(basis, index, owners)

    def vote(self, queries: np.ndarray, top: int) -> list[int]:
        """The `top` training images with the most query descriptors among their nearest stored ones (k=2)."""
        if not len(self.owners):
            return []
        _, found = self.index.search(np.ascontiguousarray(queries @ self.basis), 2)
        found = found[found >= 0]
        votes = np.bincount(self.owners[found], minlength=1)
        order = np.argsort(-votes, kind="stable")[:top]
        return [int(i) for i in order if votes[i] >= MIN_INLIERS // 2]


def index_bytes(index) -> np.ndarray:
    """A FAISS index as bytes (uint8). Not faiss.serialize_index: once SimpleITK (another SWIG library, common
    in radiology code) is imported after faiss, SWIG hands faiss's byte vector to SimpleITK's type and it fails."""
    import io

    import faiss

    buffer = io.BytesIO()
    faiss.write_index(index, faiss.PyCallbackIOWriter(buffer.write))
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def index_from_bytes(data: np.ndarray):
    """The FAISS index `index_bytes` wrote."""
    import io

    import faiss

    return faiss.read_index(
        faiss.PyCallbackIOReader(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes()).read)
    )
