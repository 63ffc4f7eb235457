"""The labeled-set folder format: a reader that validates everything up front, and an atomic writer.

    <root>/images/<id>.png         RGB (8-bit; L, P and RGBA are read as RGB), all the same size
    <root>/masks/<id>.png          uint8 class ids (mode L or P), same size as the image
    <root>/masks/classes.yaml      classes: [background, skin, ...]   (id = list index)
    <root>/keypoints.json          {"names": [...], "points": {"<id>": [[x, y, v], ...]}}
                                   x, y in pixels, pixel centres at integer coordinates;
                                   v: 0 unlabeled, 1 labeled but occluded, 2 visible
    <root>/depth/<id>.png          uint16; depth = value / scale; value 0 = invalid
    <root>/depth/depth.yaml        scale: 1000.0

Every part but images/ is optional; a task is available when its part is present.

    from handsoff_ray.datasets.labeled_folder import open_labeled_set, summarize
    ls = open_labeled_set("data/labeled", require=("segmentation",))  # LabeledSetError lists ALL problems
    sample = ls.load(0)        # LabeledSample(id, image, segmentation, keypoints, depth)
    batch = ls.load_all()      # LabeledBatch: the same, stacked along a leading axis
    print(summarize(ls))       # counts, class pixel frequencies, keypoint visibility, depth range

`open_labeled_set` decodes every file once before returning (so a bad file fails the command before
any compute starts, not an hour into a run) and never writes. Loaded depth is float32 in the units of
the stored scale, with NaN where the stored value is 0 (invalid), so a metric cannot mistake an
invalid pixel for a depth of zero.

`write_labeled_set` validates each sample before writing it and writes every file atomically (a
temporary dot-file renamed into place), so an interrupted write leaves no half-written PNG. The
metadata files (classes.yaml, depth.yaml, keypoints.json) are written last: a set whose writer was
interrupted is missing them, and `open_labeled_set` says so.

samples.py  LabeledSample / LabeledBatch / LabeledSet, LabeledSetError, the depth PNG encoding
parse.py    the folder parser: each file read and checked, every problem a line naming its file
reader.py   open_labeled_set: every check, all problems raised together
writer.py   write_labeled_set: validate each sample, write every file atomically, metadata last
summary.py  summarize: counts, class pixel frequencies, keypoint visibility, depth range

Tests: `python -m pytest -q tests/datasets/test_labeled_folder.py`.
"""

from handsoff_ray.datasets.labeled_folder.reader import open_labeled_set
from handsoff_ray.datasets.labeled_folder.samples import DEFAULT_DEPTH_SCALE, PARTS, LabeledBatch, LabeledSample, LabeledSet, LabeledSetError
from handsoff_ray.datasets.labeled_folder.summary import summarize
from handsoff_ray.datasets.labeled_folder.writer import write_labeled_set

__all__ = [
    "DEFAULT_DEPTH_SCALE",
    "PARTS",
    "LabeledSetError",
    "LabeledSample",
    "LabeledBatch",
    "LabeledSet",
    "open_labeled_set",
    "write_labeled_set",
    "summarize",
]
