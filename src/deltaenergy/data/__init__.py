"""Datasets, manifests and few-shot subsets; knows nothing of models.

Modules: ``classes`` (ID class names, import-light), ``demo`` (the offline demo's dataset registry and
builders), ``manifest`` (manifest schema and IO), ``fewshot`` (seeded few-shot draws), ``images``
(safe image loading), ``folder`` (manifests of ``root/<class>/<image>`` datasets). Nothing is imported
here, so reading class names stays cheap.
"""
