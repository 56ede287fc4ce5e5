"""Default class-to-class maps for asymmetric label noise, recognized by a dataset's class names.

- CIFAR-10 (Patrini et al., CVPR 2017, "Making deep neural networks robust to label noise: a loss
  correction approach"): truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog.
- CIFAR-100 (same paper): each class -> the next class of its super-class, cyclically, classes of a
  super-class taken in label (alphabetical) order.
- MNIST (same paper): 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1 (torchvision's class names, ``"2 - two"``).

A map applies when all the class names it mentions are among the dataset's classes (so the CIFAR-10
map also fits the CIFAR-10 ImageFolder tree). Any other dataset needs ``data.noise.flip_map``.
"""

from __future__ import annotations

CIFAR10 = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}

CIFAR100_SUPERCLASSES = (
    ("beaver", "dolphin", "otter", "seal", "whale"),
    ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    ("orchid", "poppy", "rose", "sunflower", "tulip"),
    ("bottle", "bowl", "can", "cup", "plate"),
    ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    ("clock", "keyboard", "lamp", "telephone", "television"),
    ("bed", "chair", "couch", "table", "wardrobe"),
    ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    ("bear", "leopard", "lion", "tiger", "wolf"),
    ("bridge", "castle", "house", "road", "skyscraper"),
    ("cloud", "forest", "mountain", "plain", "sea"),
    ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    ("fox", "porcupine", "possum", "raccoon", "skunk"),
    ("crab", "lobster", "snail", "spider", "worm"),
    ("baby", "boy", "girl", "man", "woman"),
    ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
)

CIFAR100 = {
    name: group[(i + 1) % len(group)] for group in CIFAR100_SUPERCLASSES for i, name in enumerate(group)
}

MNIST = {"2 - two": "7 - seven", "3 - three": "8 - eight", "5 - five": "6 - six",
         "6 - six": "5 - five", "7 - seven": "1 - one"}

DEFAULT_MAPS: tuple[tuple[str, dict[str, str]], ...] = (
    ("CIFAR-100", CIFAR100),
    ("CIFAR-10", CIFAR10),
    ("MNIST", MNIST),
)


def default_flip_map(classes: list[str]) -> dict[int, int] | None:
    """The first default map whose class names all occur in ``classes``, as label ids; else None."""
    index = {name: i for i, name in enumerate(classes)}
    for _, mapping in DEFAULT_MAPS:
        if all(source in index and target in index for source, target in mapping.items()):
            return {index[source]: index[target] for source, target in mapping.items()}
    return None
