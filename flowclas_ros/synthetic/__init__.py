"""Synthetic anomaly segmentation data in two domains (``flowclas synth``).

Inlier scenes are drawn procedurally (numpy + PIL rasterisation), deterministic from a seed:

- ``orbital``: black space with stars, sometimes the Earth's limb, lit structures (lattice
  trusses, solar panel wings, cylindrical modules, radiators, a robotic arm) under a sun of
  random direction and strength, cast shadows, sensor noise.
- ``road``: sky gradient with clouds, buildings with windows, trees, a perspective road
  with asphalt texture, lane markings, kerbs and pavements, varied sun and tint.

Anomalies are objects cut from real photographs and textures bundled with scikit-image
(no download), never from the synthetic inlier domain. Sources whose content belongs to a
domain are excluded from it (grass, gravel, brick and the motorcycle from ``road``; the
Moon, the Hubble deep field and the launch tower from ``orbital``). The sources are split
in two disjoint sets: ``train`` sources fill the outlier folder used for pasting during
training, ``test`` sources are held out for the test split and the camera sequence, so
evaluation measures objects the model never saw.

Test labels: 0 inlier, 1 anomaly, 255 void. Objects are pasted with anti-aliased edges;
the mixed edge pixels (object coverage strictly between 0 and 1) are void, since they are
neither clean inlier nor clean object. Every pixel labelled 0 equals the inlier image.

Modules, each using only those before it: ``render`` (layers, shading, shadows, exposure),
``scenes`` (the two domains' scene builders, ``inlier_image``), ``objects`` (the photo
sources and ``cut_object``), ``samples`` (compositing, ``anomaly_sample``, ``sequence``,
``write_dataset``, ``preview``), ``generate`` (a whole dataset from typed options) and
``camera_bag`` (a rosbag2 of a camera sequence with ground truth).
"""

from flowclas_ros.synthetic.objects import SOURCES, SPLITS, Source, cut_object, sources
from flowclas_ros.synthetic.samples import (
    ANOMALY,
    INLIER,
    OBJECT,
    VOID,
    AnomalySample,
    anomaly_sample,
    outlier_item,
    preview,
    sequence,
    write_dataset,
)
from flowclas_ros.synthetic.scenes import DOMAINS, inlier_image

__all__ = [
    "ANOMALY",
    "DOMAINS",
    "INLIER",
    "OBJECT",
    "SOURCES",
    "SPLITS",
    "VOID",
    "AnomalySample",
    "Source",
    "anomaly_sample",
    "cut_object",
    "inlier_image",
    "outlier_item",
    "preview",
    "sequence",
    "sources",
    "write_dataset",
]
