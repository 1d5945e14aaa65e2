"""Reading and writing images with their geometry, and dataset layouts."""
from seg3d.io.image import Geometry, Image, Reorientation, read_header, read_image, write_image
from seg3d.io.layout import Case, Dataset, load_dataset

__all__ = ["Geometry", "Image", "Reorientation", "read_header", "read_image", "write_image",
           "Case", "Dataset", "load_dataset"]
