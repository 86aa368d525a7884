"""The napari layer: the only package that imports napari, qtpy or magicgui."""
