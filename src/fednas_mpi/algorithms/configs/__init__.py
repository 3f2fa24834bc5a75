"""Each method's config sections, torch-free: ``config`` validates a YAML against these
classes (handed to it by ``algorithms.registry``) without importing any method code. Each
method's ``algorithm`` class (a plain subclass of ``config.AlgorithmConfig``) sits beside
its sections."""
