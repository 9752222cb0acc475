"""The FID Inception network from a local weights file (nothing is downloaded).

Two files are understood:
- pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (1008 classes): the TensorFlow FID graph ported to
  PyTorch, whose average pools exclude padding and whose last block max-pools. This is the standard FID
  network; the blocks below follow pytorch-fid (Apache-2.0, github.com/mseitzer/pytorch-fid).
- torchvision's `inception_v3_google-0cc3c7bd.pth` (1000 classes): close to, but not exactly, the FID network
  (numbers differ slightly from published FIDs).
Features are the 2048-d pool3 activations of RGB images resized to 299x299 (bilinear) and scaled to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MedisynError

FID_CLASSES = 1008


def load_inception(path: str | Path, device):
    """(model in eval mode returning (B, 2048) features, variant name) from a local weights file."""
    import torch
    from torchvision.models.inception import Inception3

    path = Path(path)
    if not path.is_file():
        raise MedisynError(f"inception:{path}: no such file (give pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                           f"or torchvision's inception_v3_google-0cc3c7bd.pth; nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        classes = int(state["fc.weight"].shape[0])
    except Exception as exc:  # not a state dict, or not an Inception one
        raise MedisynError(f"inception:{path}: not an Inception v3 state dict ({type(exc).__name__}: {exc})"[:300]) \
            from exc
    fid_variant = classes == FID_CLASSES
    aux = not fid_variant and any(k.startswith("AuxLogits") for k in state)
    model = Inception3(num_classes=classes, aux_logits=aux, transform_input=False, init_weights=False)
    if fid_variant:
        _use_fid_blocks(model)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MedisynError(f"inception:{path}: weights do not fit Inception v3 ({str(exc).splitlines()[0]})") from exc
    model.fc = torch.nn.Identity()
    model.aux_logits, model.AuxLogits = False, None
    return model.to(device).eval(), "pytorch-fid (TF FID graph)" if fid_variant else "torchvision"


def inception_features(model, images: list, device) -> np.ndarray:
    """(N, 2048) float32 pool3 features of PIL images."""
    import torch
    import torch.nn.functional as F

    from ..embed import to_8bit

    batch = []
    for image in images:
        x = torch.from_numpy(np.asarray(to_8bit(image).convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)[None]
        batch.append(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)[0])
    with torch.no_grad():
        return model(torch.stack(batch).to(device) * 2 - 1).float().cpu().numpy()


def _use_fid_blocks(model) -> None:
    """Swap torchvision's mixed blocks for the FID graph's (pooling without padding, max pool in the last)."""
    a, c, e1, e2 = _fid_block_classes()
    model.Mixed_5b, model.Mixed_5c, model.Mixed_5d = a(192, pool_features=32), a(256, pool_features=64), \
        a(288, pool_features=64)
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
