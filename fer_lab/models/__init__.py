"""Models: backbones, the CD-FER global-local extractor, adversarial alignment pieces.

>>> import torch
>>> from fer_lab.models import build_extractor
>>> ext = build_extractor("smallcnn", feat_dim=32)
>>> feats = ext(torch.rand(2, 3, 64, 64), torch.full((2, 5, 2), 32.0))
>>> {k: tuple(v.shape) for k, v in feats.items()}["fused"]
(2, 192)
"""

from fer_lab.models.adversarial import (
    DomainDiscriminator,
    GradientReversal,
    GradientReversalFunction,
    RandomizedMultilinear,
    WarmStartGradientReverse,
    cdan_multilinear,
    domain_adversarial_loss,
    entropy,
    entropy_weight,
    gradient_reversal,
    grl_warmup,
)
from fer_lab.models.backbones import (
    BACKBONES,
    Backbone,
    BottleneckIR,
    IRNet,
    SmallCNN,
    TorchvisionResNet,
    build_backbone,
    load_state_dict_file,
)
from fer_lab.models.global_local import (
    CropNet,
    GlobalHead,
    GlobalLocalExtractor,
    LocalHead,
    build_extractor,
    crop_patches,
    crop_patches_loop,
    landmark_cells,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BottleneckIR",
    "CropNet",
    "DomainDiscriminator",
    "GlobalHead",
    "GlobalLocalExtractor",
    "GradientReversal",
    "GradientReversalFunction",
    "IRNet",
    "LocalHead",
    "RandomizedMultilinear",
    "SmallCNN",
    "TorchvisionResNet",
    "WarmStartGradientReverse",
    "build_backbone",
    "build_extractor",
    "cdan_multilinear",
    "crop_patches",
    "crop_patches_loop",
    "domain_adversarial_loss",
    "entropy",
    "entropy_weight",
    "gradient_reversal",
    "grl_warmup",
    "landmark_cells",
    "load_state_dict_file",
]
