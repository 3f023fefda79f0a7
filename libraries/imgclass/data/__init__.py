"""Datasets on disk: listing and splitting, getting images (demo, URL lists, image search),
finding duplicates, and correcting labels by moving files."""
