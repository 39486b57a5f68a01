"""The Hugging Face model layer: a family registry and a backbone wrapper driven by hooks."""

from fedfm.models.hf.backbone import BackboneSpec, HFBackbone, StopForward
from fedfm.models.hf.family import (
    FAMILIES,
    AttnSpec,
    FamilySpec,
    MLPSpec,
    auto_blocks,
    auto_family,
    register_family,
    resolve,
)

__all__ = ["FAMILIES", "AttnSpec", "BackboneSpec", "FamilySpec", "HFBackbone", "MLPSpec",
           "StopForward", "auto_blocks", "auto_family", "register_family", "resolve"]
