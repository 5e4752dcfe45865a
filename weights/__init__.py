"""Trained models. Installed as `refdecomp.weights` with one file only, the demo's default
model `digits_cnn.h5` (package data, so `refdecomp demo` runs from a wheel, offline); the other
models stay in the repository."""
