"""Datasets: the SynthFaces generator and the loaders for CelebA, CelebAMask-HQ and JAFFE layouts."""
