"""auglens: measure how data augmentation changes what an image classifier looks at."""

__version__ = "0.1.0"
