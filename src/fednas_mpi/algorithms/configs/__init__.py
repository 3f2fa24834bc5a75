"""Each method's config sections, torch-free: ``config`` validates a YAML against these
classes (handed to it by ``algorithms.catalogue``) without importing any method code."""
