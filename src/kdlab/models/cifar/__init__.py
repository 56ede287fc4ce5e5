"""The CIFAR benchmark zoo of RepDistiller (Tian et al., "Contrastive Representation Distillation",
ICLR 2020): ResNet, WRN, VGG-BN, MobileNetV2 and ShuffleNet V1/V2 in their 32x32 variants.

Importing this package registers every model with :mod:`kdlab.models.registry`.
"""

from kdlab.models.cifar import mobilenetv2, resnet, shufflenetv1, shufflenetv2, vgg, wrn

__all__ = ["mobilenetv2", "resnet", "shufflenetv1", "shufflenetv2", "vgg", "wrn"]
