"""Class names of the segmentation datasets, in label order (index = class id; 255 is void everywhere).

One home for every part that names classes: the packers (``class_names.txt``, ``netspec.data.packers``), the
synthetic demo set (``netspec.data.synthetic``), the zoo (its models' ``num_output``) and ``tools/score.py``'s
``--classes`` (``known_classes`` of the evaluation tools). Plain data: no imports.
"""

__all__ = ["DEMO_CLASSES", "VOC_CLASSES", "KITTI_ROAD_CLASSES", "CITYSCAPES_CLASSES", "SIFTFLOW_CLASSES",
           "SIFTFLOW_GEO_CLASSES", "IDD_CLASSES"]

#: The synthetic demo set's classes (netspec.data.synthetic draws them).
DEMO_CLASSES = ("background", "disc", "square", "triangle")
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
#: KITTI road's two classes, as the packer writes them into class_names.txt and tools/score.py prints them.
KITTI_ROAD_CLASSES = ("non-road", "road")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
#: SIFT Flow's 33 semantic classes (FCN's siftflow_layers subtracts 1, so 0 = awning).
SIFTFLOW_CLASSES = ("awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk",
                    "desert", "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole",
                    "river", "road", "rock", "sand", "sea", "sidewalk", "sign", "sky", "staircase",
                    "streetlight", "sun", "tree", "window")
SIFTFLOW_GEO_CLASSES = ("sky", "horizontal", "vertical")
# IDD (Indian Driving Dataset) level-3 classes, index = level3Id of AutoNUE's helpers/anue_labels.py; 255 = void
# (unlabeled, ego vehicle, rectification border, out of roi, license plate). Merged labels take the name of
# the group: 1 = parking + drivable fallback, 3 = rail track + non-drivable fallback, 4 = person + animal,
# 12 = caravan, trailer, train + vehicle fallback, 20 = pole + polegroup, 23 = bridge + tunnel,
# 25 = sky + fallback background.
IDD_CLASSES = ("road", "drivable fallback", "sidewalk", "non-drivable fallback", "person/animal", "rider",
               "motorcycle", "bicycle", "autorickshaw", "car", "truck", "bus", "vehicle fallback", "curb", "wall",
               "fence", "guard rail", "billboard", "traffic sign", "traffic light", "pole", "obs-str-bar-fallback",
               "building", "bridge/tunnel", "vegetation", "sky")
