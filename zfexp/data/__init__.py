"""LightningDataModules with the paper's preprocessing (mean image, crops, flips, 10-crop evaluation)."""

from zfexp.data.base import ImageClassificationDataModule
from zfexp.data.caltech import Caltech101DataModule, Caltech256DataModule, ImageFolderFewShotDataModule
from zfexp.data.cifar10 import CIFAR10DataModule
from zfexp.data.fashion_mnist import FashionMNISTDataModule, FashionMNISTFewShotDataModule
from zfexp.data.few_shot import FewShotDataModule, few_shot_split
from zfexp.data.imagenet import ImageFolderDataModule, load_rgb
from zfexp.data.mean_image import compute_mean_image
from zfexp.data.transforms import Preprocessing, base_transform, paper_transform

__all__ = ["CIFAR10DataModule", "Caltech101DataModule", "Caltech256DataModule", "FashionMNISTDataModule",
           "FashionMNISTFewShotDataModule", "FewShotDataModule", "ImageClassificationDataModule",
           "ImageFolderDataModule", "ImageFolderFewShotDataModule", "Preprocessing", "base_transform",
           "compute_mean_image", "few_shot_split", "load_rgb", "paper_transform"]
