"""Lets the tests import the top-level modules (neural_style, vgg, …) from a fresh clone."""
