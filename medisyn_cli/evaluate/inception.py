"""The FID Inception network from a local weights file (nothing is downloaded).

Two files are understood:
- pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (1008 classes): the TensorFlow FID graph ported to
  PyTorch, whose average pools exclude padding and whose last block max-pools. This is the standard FID
  network; the blocks below follow pytorch-fid (Apache-2.0, github.com/mseitzer/pytorch-fid).
- torchvision's `inception_v3_google-0cc3c7bd.pth` (1000 classes): close to, but not exactly, the FID network
  (numbers differ slightly from published FIDs).
Features are the 2048-d pool3 activations of 8-bit RGB images preprocessed as the TensorFlow FID code does (and
torch-fidelity and torchmetrics after it): TensorFlow 1.x bilinear resize to 299x299 (align_corners=False, no
half-pixel centres) of the uint8 values, then (x - 128) / 128. With the same weights file, features and FID
match torch-fidelity's to float precision (tests/test_evaluate.py checks FID to 1e-4 relative). pytorch-fid's
preprocessing (torch bilinear, x / 127.5 - 1) gives slightly different numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import to_8bit

FID_CLASSES = 1008
INPUT_SIDE = 299


def load_inception(path: str | Path, device):
    """(model in eval mode returning (B, 2048) features, variant name) from a local weights file."""
    import torch
    from torchvision.models.inception import Inception3

    path = Path(path)
    if not path.is_file():
        raise MedisynError(
            f"inception:{path}: no such file (give pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
            f"or torchvision's inception_v3_google-0cc3c7bd.pth; nothing is downloaded)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        classes = int(state["fc.weight"].shape[0])
    except Exception as exc:  # not a state dict, or not an Inception one
        raise MedisynError(
            f"inception:{path}: not an Inception v3 state dict ({type(exc).__name__}: {exc})"[:300]
        ) from exc
    fid_variant = classes == FID_CLASSES
    aux = not fid_variant and any(k.startswith("AuxLogits") for k in state)
    model = Inception3(num_classes=classes, aux_logits=aux, transform_input=False, init_weights=False)
    if fid_variant:
        _use_fid_blocks(model)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MedisynError(
            f"inception:{path}: weights do not fit Inception v3 ({str(exc).splitlines()[0]})"
        ) from exc
    model.fc = torch.nn.Identity()
    model.aux_logits, model.AuxLogits = False, None
    return model.to(device).eval(), "pytorch-fid (TF FID graph)" if fid_variant else "torchvision"


def inception_features(model, images: list, device) -> np.ndarray:
    """(N, 2048) float32 pool3 features of PIL images (TF-compatible resize and scaling)."""
    import torch

    batch = [
        resize_like_tensorflow(
            torch.from_numpy(np.asarray(to_8bit(image).convert("RGB"), np.uint8).copy())
            .permute(2, 0, 1)[None]
            .float(),
            INPUT_SIDE,
        )[0]
        for image in images
    ]
    with torch.no_grad():
        return model((torch.stack(batch).to(device) - 128.0) / 128.0).float().cpu().numpy()


def resize_like_tensorflow(x, side: int):
    """Bilinear resize of float (N, C, H, W) to (side, side) as TensorFlow 1.x's resize_bilinear
    (align_corners=False, half_pixel_centers=False): source = destination x in/out, corners not aligned."""
    import torch

    def axis(size_in: int):
        position = torch.arange(side, dtype=torch.float32) * torch.tensor(size_in / side, dtype=torch.float32)
        low = position.long()
        return low, (low + 1).clamp_max(size_in - 1), position - low.float()

    (y0, y1, dy), (x0, x1, dx) = axis(x.shape[2]), axis(x.shape[3])
    top, bottom = x.index_select(2, y0), x.index_select(2, y1)
    top = top.index_select(3, x0) + (top.index_select(3, x1) - top.index_select(3, x0)) * dx.view(
        1, 1, 1, side
    )
    bottom = bottom.index_select(3, x0) + (bottom.index_select(3, x1) - bottom.index_select(3, x0)) * dx.view(
        1, 1, 1, side
    )
    return top + (bottom - top) * dy.view(1, 1, side, 1)


def _use_fid_blocks(model) -> None:
    """Swap torchvision's mixed blocks for the FID graph's (pooling without padding, max pool in the last)."""
    a, c, e1, e2 = _fid_block_classes()
    model.Mixed_5b, model.Mixed_5c, model.Mixed_5d = (
        a(192, pool_features=32),
        a(256, pool_features=64),
        a(288, pool_features=64),
    )
    model.Mixed_6b, model.Mixed_6c = c(768, channels_7x7=128), c(768, channels_7x7=160)
    model.Mixed_6d, model.Mixed_6e = c(768, channels_7x7=160), c(768, channels_7x7=192)
    model.Mixed_7b, model.Mixed_7c = e1(1280), e2(2048)


def _fid_block_classes():
    import torch
    import torch.nn.functional as F
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    def avg_pool(x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class FIDInceptionA(InceptionA):
        def _forward(self, x):
            five = self.branch5x5_2(self.branch5x5_1(x))
            dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), five, dbl, self.branch_pool(avg_pool(x))]

    class FIDInceptionC(InceptionC):
        def _forward(self, x):
            seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            dbl = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                dbl = layer(dbl)
            return [self.branch1x1(x), seven, dbl, self.branch_pool(avg_pool(x))]

    class FIDInceptionE1(InceptionE):
        pool = staticmethod(avg_pool)

        def _forward(self, x):
            three = self.branch3x3_1(x)
            three = torch.cat([self.branch3x3_2a(three), self.branch3x3_2b(three)], 1)
            dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            dbl = torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], 1)
            return [self.branch1x1(x), three, dbl, self.branch_pool(self.pool(x))]

    class FIDInceptionE2(FIDInceptionE1):
        pool = staticmethod(lambda x: F.max_pool2d(x, kernel_size=3, stride=1, padding=1))

    return FIDInceptionA, FIDInceptionC, FIDInceptionE1, FIDInceptionE2
