"""The scorer's closed vocabularies: what a setting may say, and what the scorer reports.

Enums, so that a misspelt value is a type error and not a silently false comparison, and one
place for each word list, which `settings` parses into and the rest reads. Standard library
only: the gunicorn master imports them with the settings, before (and without) numpy or ONNX
Runtime.
"""

from __future__ import annotations

import enum
from typing import TypeVar

VocabularyT = TypeVar("VocabularyT", bound=enum.Enum)  # any of them, in a parser of words
# The word that leaves a choice to the scorer (providers) or to the export (overrides)
AUTO = "auto"


class Switch(str, enum.Enum):
    """An operator's choice for a feature that pays off only somewhere (each setting says
    where): `auto` takes it there."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"

    def applies(self, where_it_pays: bool) -> bool:
        return self is Switch.ON or (self is Switch.AUTO and where_it_pays)


class CudnnSearch(str, enum.Enum):
    """How the CUDA provider picks a convolution kernel for each new input shape."""

    EXHAUSTIVE = "EXHAUSTIVE"  # tries them all: the fastest runs, the slowest first run
    HEURISTIC = "HEURISTIC"  # cuDNN's guess
    DEFAULT = "DEFAULT"  # one fixed kernel: the least workspace memory


class PixelFormat(str, enum.Enum):
    """The colour order an export takes (its `Image.BitmapPixelFormat`)."""

    RGB8 = "Rgb8"
    BGR8 = "Bgr8"


class PixelRange(str, enum.Enum):
    """The value range an export takes (its `Image.NominalPixelRange`)."""

    NOMINAL_0_255 = "NominalRange_0_255"
    NORMALIZED_0_1 = "Normalized_0_1"
    NORMALIZED_1_1 = "Normalized_1_1"


class ResizeMethod(str, enum.Enum):
    """How an export's image is resized (its `CustomVision.Preprocess.ResizeMethod`)."""

    STRETCH = "Stretch"  # to the target size, aspect not kept
    BY_SHORTER_SIDE = "ByShorterSide"  # the shorter side to the target's, aspect kept
    BY_PIXEL_COUNT = "ByPixelCountAlign32"  # about the target's pixels, sides in 32s


class CropMethod(str, enum.Enum):
    """Whether an export's resized image is cropped (its `CustomVision.Preprocess.CropMethod`)."""

    NONE = "NoCrop"
    CENTER = "OneCropCenter"


class NmsScope(str, enum.Enum):
    """Which boxes suppress each other in a YOLO export's non-maximum suppression."""

    PER_CLASS = "per_class"  # as Custom Vision's script does
    GLOBAL = "global"  # any two overlapping boxes, whatever their tags


class YoloResize(str, enum.Enum):
    """How a YOLO-head export's input is sized."""

    EXPORT = "export"  # by its metadata, else ByPixelCountAlign32 at 512x512, like its script
    STRETCH = "stretch"  # to the input size the graph declares (416x416), aspect not kept


class CertificateSource(str, enum.Enum):
    """Where a TLS certificate comes from."""

    AUTO = "auto"  # the PEM files of SCORER_TLS_CERT_FILE and SCORER_TLS_KEY_FILE, if set
    EDGE = "edge"  # IoT Edge's workload API, signed by the device's edge CA, renewed


class Binding(str, enum.Enum):
    """Where a model's fixed-size inputs are bound (reported as `ioBinding`)."""

    CUDA = "cuda"
    CPU = "cpu"
    OFF = "off"
