"""Models written here on scvi-tools' base classes: scArches' families whose own package no longer runs.

Each follows scvi-tools' separation: a module (the network and its losses, ``BaseModuleClass``) and a
model (set-up, training, surgery in ``ArchesMixin``'s style, inference).
"""
