"""Built-in data: synthetic nuclei images and volumes with ground truth."""
