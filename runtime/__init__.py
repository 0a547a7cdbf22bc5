"""The torch-free runtime: numpy, the standard library, and one backend imported lazily."""
