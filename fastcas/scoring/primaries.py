"""The pixel encoder's primaries: what each one measures, the value names of the categorical
one (colour), and the vocabulary primaries pixels cannot measure. Shared by
:mod:`fastcas.scoring.pixel` (the measurements) and :mod:`fastcas.scoring.bins` (their ids),
so neither imports the other's internals."""

HUES = ["achromatic", "red", "yellow", "green", "cyan", "blue", "magenta"]
MEASURES = {
    "color": "hue sector of the chroma-weighted mean colour",
    "texture": "mean gradient magnitude of luma",
    "pattern": "coarse/fine gradient energy ratio",
    "shape": "foreground elongation sqrt(l1/l2)",
    "size": "foreground area fraction",
    "lighting": "standard deviation of luma (contrast)",
    "brightness": "mean luma",
    "background": "mean luma of the border ring",
    "count": "connected foreground components >= 1% of the image",
    "occlusion": "share of border pixels that are foreground",
    "style": "colourfulness (Hasler & Suesstrunk 2003)",
    "orientation": "foreground principal-axis angle, degrees",
    "position in frame": "foreground centroid distance from the centre / half diagonal",
}
PRIMARIES = list(MEASURES)
CATEGORICAL = {"color": HUES}  # primary -> value names (ids are the measurement itself)
UNMEASURABLE = ["material", "viewpoint", "scene", "weather", "time of day", "pose", "condition"]
