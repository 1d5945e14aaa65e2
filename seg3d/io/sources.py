"""Case sources: where one case's channels come from, and how they are read into ``(array, Geometry)``.

A :class:`CaseSource` is plain, picklable data (a distributed runner ships it to a worker). Today its
channels are image files (one per channel, or one 4D file holding all channels); a DICOM series source yields
the same ``(float32 (C, z, y, x), Geometry)`` from a series folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg3d.io.image import Geometry, ending_of, read_header
from seg3d.io.layout import Case, read_case_images
from seg3d.io.writers import format_for_path


@dataclass(frozen=True)
class CaseSource:
    """One case to predict.

    Attributes:
        case_id: the case name (output files are ``<case_id><ending>``).
        channels: channel files in channel order (or one 4D file with ``four_d``).
        format: the input format (``nifti``, ``nrrd``, ``mha``; a DICOM series source says ``dicom``).
        four_d: one file holds all channels along its 4th axis (MSD layout).
    """

    case_id: str
    channels: tuple[Path, ...]
    format: str = "nifti"
    four_d: bool = False

    @classmethod
    def from_files(cls, case_id: str, channels, four_d: bool = False) -> CaseSource:
        paths = tuple(Path(p) for p in channels)
        return cls(case_id, paths, format_for_path(paths[0]), four_d)

    @classmethod
    def from_case(cls, case: Case) -> CaseSource:
        """A dataset case's images (its label is not part of the source)."""
        return cls.from_files(case.case_id, case.images, case.four_d)

    @property
    def reference(self) -> Path:
        """What a writer copies the header from: the first channel file."""
        return self.channels[0]

    @property
    def ending(self) -> str:
        """The input's file ending (``.nii.gz``, ...): outputs keep it unless another format is asked for."""
        return ending_of(self.reference) or ".nii.gz"

    def read(self, num_channels: int | None = None) -> tuple[np.ndarray, Geometry]:
        """All channels as float32 ``(C, z, y, x)`` and channel 0's Geometry.

        Raises:
            Seg3dError: a channel missing, unreadable, not 3D, on another grid, or not ``num_channels``.
        """
        n = num_channels if num_channels is not None else len(self.channels)
        return read_case_images(Case(self.case_id, self.channels, four_d=self.four_d), n)

    def size(self) -> tuple[int, ...]:
        """The input grid's size (x, y, z) from the header only. Raises Seg3dError if unreadable."""
        return read_header(self.reference).geometry.size
